"""Run a benchmark's child process and measure it: wall time and that process's own peak RSS."""

from __future__ import annotations

import os
import subprocess
import threading
import time

from report import ROOT


def run_measured(cmd: list[str], rss_cap_mb: float | None = None) -> tuple[float, float, str, bool]:
    """Run a command: (wall seconds, its own peak RSS in MB via wait4, stdout, killed at the cap).

    With `rss_cap_mb`, a watchdog kills the process when its RSS passes the cap, so a retrieval
    that would not fit does not push other people's work on this machine out of memory.
    """
    started = time.perf_counter()
    killed = threading.Event()
    with open(os.devnull, "w") as devnull:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=devnull, text=True, cwd=ROOT)

        def watch() -> None:
            while proc.poll() is None:
                try:
                    with open(f"/proc/{proc.pid}/status") as f:
                        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
                except (OSError, StopIteration, ValueError):
                    return
                if rss_kb / 1024 > rss_cap_mb:
                    killed.set()
                    proc.kill()
                    return
                time.sleep(0.2)

        if rss_cap_mb:
            threading.Thread(target=watch, daemon=True).start()
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0 and not killed.is_set():
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed with exit code {proc.returncode}")
    return wall, usage.ru_maxrss / 1024, out, killed.is_set()
