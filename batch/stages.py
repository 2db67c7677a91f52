"""Wall time and peak memory per stage of a batch run, for the run summary and bench/batch.py.

Peak RSS of a stage is the highest resident set size sampled (every 20 ms, from /proc) while
the stage was running. Retrieval runs one chunk ahead in a background thread, so stages
overlap and their peaks can coincide; the process's own peak (ru_maxrss) is reported too.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

SAMPLE_SECONDS = 0.02
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size; the peak so far where /proc is not available."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if os.uname().sysname == "Darwin" else peak * 1024


class StageClock:
    """Accumulates seconds per stage and samples RSS while stages run (`with clock.stage(name)`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}
        self._active: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._sampler = threading.Thread(target=self._sample_loop, name="rss-sampler", daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        rss = rss_bytes()
        with self._lock:
            for name in self._active:
                if self._active[name] > 0 and rss > self.peak_rss.get(name, 0):
                    self.peak_rss[name] = rss

    def _sample_loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with self._lock:
            self._active[name] += 1
            self.seconds.setdefault(name, 0.0)
        self._sample()
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self._sample()
            with self._lock:
                self.seconds[name] += elapsed
                self._active[name] -= 1

    def add(self, name: str, seconds: float) -> None:
        """Time measured elsewhere (e.g. the parts of retrieval), without an RSS sample."""
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @property
    def wall_seconds(self) -> float:
        return time.perf_counter() - self._started

    def close(self) -> None:
        self._stop.set()
        self._sampler.join(timeout=1)
