"""Model rollout without downtime: a new bundle is loaded next to the old one, then swapped in.

When the service serves `latest` and the `latest` link in the model directory moves (a new
`skewless train`), or when the worker gets SIGHUP, the worker loads the bundle `latest` names in
a background thread, verifies it as at start-up (the model file's sha256 against its manifest,
its contract against the registry: skewless/bundle.py), warms it up, and swaps the whole
`Model` (bundle, feature lookup, log, budgets) in one assignment. Requests read the model once,
so each is scored wholly by one version, and every answer names the version that scored it.

A bundle that fails verification is refused: the old model keeps serving, the refusal is
logged, counted (`skewless_model_rollouts_refused_total`) and shown by /ready (still 200: the
service serves, with the old model), and the same version is not retried until `latest` moves
again or SIGHUP asks. A service pinned to a version (`--model VERSION`) reloads only on SIGHUP.
With `--workers N`, uvicorn's supervisor answers SIGHUP by restarting the workers one by one;
the `latest` watch swaps in place in every worker.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from online.metrics import MODEL_REFUSED
from online.service import Service, load_model
from skewless.bundle import LATEST, MODEL_NAME

log = logging.getLogger("skewless.online")
ROLLOUT_NICE = 10  # added to this thread's nice value: a load competes with the requests for the CPU, and loses
CLOSE_GRACE_S = 2.0  # an old model's log is closed this long after the swap: requests in flight finish with it


def latest_version(model_dir: Path, name: str = MODEL_NAME) -> str | None:
    """The version the `latest` link names now, or None when there is none."""
    link = Path(model_dir) / name / LATEST
    try:
        return link.resolve(strict=True).name
    except OSError:
        return None


class Rollout:
    """The background watcher of one worker."""

    def __init__(self, service: Service, poll_s: float):
        self.service = service
        self.poll_s = poll_s
        self.follows_latest = service.settings.model_version == LATEST
        self.refused: str | None = None  # a version refused, not tried again until `latest` moves
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-rollout", daemon=True)

    def start(self) -> "Rollout":
        self._thread.start()
        return self

    def poke(self) -> None:
        """SIGHUP: look now, and retry a refused version."""
        self.refused = None
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        _lower_priority()
        while not self._stop.is_set():
            forced = self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check(forced)
            except Exception:  # never let the watcher die: the service keeps its model
                log.exception("model rollout check failed")

    def check(self, forced: bool = False) -> str | None:
        """Swap in the bundle to serve when it differs from the current one; the new version or None."""
        settings, current = self.service.settings, self.service.model.bundle
        target = latest_version(settings.model_dir, current.name) if self.follows_latest else settings.model_version
        if target is None or (target == current.version and not forced) or target == self.refused:
            return None
        try:
            new = load_model(settings, self.service.store, target, current=self.service.model)
        except Exception as exc:  # BundleError, a half-copied directory, an unreadable file
            self.refused = target
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.service.rollout_problem = f"bundle {current.name}/{target} refused, still serving {current.version}: {first}"
            MODEL_REFUSED.inc()
            log.warning(self.service.rollout_problem)
            return None
        old = self.service.swap(new)
        log.warning("model rollout: now serving %s/%s (was %s)", new.bundle.name, new.bundle.version, old.bundle.version)
        if old.feature_log is not None:
            threading.Timer(CLOSE_GRACE_S, old.feature_log.close).start()
        return new.bundle.version


def _lower_priority() -> None:
    """Give the watcher thread (only it: Linux applies a thread id's priority to that thread) a
    higher nice value. Loading a bundle is ~35 ms of CPU in XGBoost's C code, which releases the
    GIL; on a busy machine that CPU would otherwise be taken from the requests. What still runs
    in Python while the GIL is held (verification, the warm-up) is kept to a few ms."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + ROLLOUT_NICE)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: the load runs at the worker's priority
