"""Fail fast while the online store is failing, and find out by itself when it is back.

A request waits for Redis at most the socket timeout (times 1 + retries). That bounds one
request, but when Redis hangs every request would wait it out in turn, and the feature read
runs on the event loop (on purpose: see online/app.py), so /health would queue behind them.
After a failure the breaker is open for `cooldown_s`: requests fail at once with the last
error. Then it lets one request through to try Redis again (half-open): success closes it,
failure opens it for another cooldown. No restart, no background task.
"""

from __future__ import annotations

import time


class StoreUnavailable(Exception):
    """The online store cannot be read now; the message says why and that it is retried."""


class Breaker:
    def __init__(self, cooldown_s: float, what: str):
        self.cooldown_s = cooldown_s
        self.what = what  # e.g. "online store (Redis 127.0.0.1:6379)"
        self.open_until = 0.0
        self.last_error = ""

    def check(self) -> None:
        """Raise StoreUnavailable while open; past the cooldown let this caller try (half-open)."""
        if self.open_until:
            now = time.monotonic()
            if now < self.open_until:
                raise StoreUnavailable(
                    f"{self.what} unavailable: {self.last_error}; retrying in {self.open_until - now:.1f}s"
                )
            self.open_until = now + self.cooldown_s  # others keep failing fast while this one tries

    def failure(self, exc: BaseException) -> StoreUnavailable:
        """Record a failure; the exception to raise to the caller."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.open_until = time.monotonic() + self.cooldown_s if self.cooldown_s > 0 else 0.0
        return StoreUnavailable(f"{self.what} unavailable: {self.last_error}")

    def success(self) -> None:
        self.open_until = 0.0
