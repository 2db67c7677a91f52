"""Dynamic batching of POST /predict: the concurrent requests of a worker scored in one go.

A worker runs its requests one after another on one event loop, and a request's Redis read,
on-demand transform and model call cost about the same for one customer as for ten. So the
requests that are ready at the same moment are gathered and go through `Service.predict`
together: one Redis round trip, one on-demand transform, one model call, one log append. Each
request still gets its own answer (its own 404, its own `include_features`) and its own log row;
a Redis failure answers every request of the batch with its own 503.

How requests are gathered (no thread, no timer at low load):

- The first request to arrive becomes the batch's leader and yields the event loop once
  (`asyncio.sleep(0)`). Requests whose bytes arrived together, for instance while the previous
  batch held the loop, are already scheduled; they run up to here meanwhile and join as
  followers, each waiting on a future.
- The leader then scores the batch and resolves the followers' futures. A lone request costs
  one extra turn of the loop (a few microseconds), never a wait.
- `max_wait_s` > 0 (SKEWLESS_BATCH_WAIT_MS, 3 ms by default) lets a leader wait up to that long
  for more requests, but only while waiting pays: while this worker's requests arrive at least
  twice a wait (a running mean of the last ~16 gaps at most half the wait, so that a wait
  gathers two or more on average), and not right after a wait that gathered nobody. Such a
  wait makes the next 1, 2, 4, ... up to 256 leaders go at once before one tries again; a batch
  of more than one, waited for or not, lets the next leader wait. So at low load, or behind
  one client that sends a request only after the previous answer, a request goes at once (bar
  one in up to 256 that tries). With two workers and the 3 ms default, leaders wait often
  above ~1,300 requests/s in all, and at 1,000/s one to a few requests in a hundred still
  wait: most likely because clients reuse their idle keep-alive connections last-in-first-out,
  so one worker gets most of the requests (a gap near 1 ms), and a wait that gathers one more
  request lets the next leader wait again. Measured side by side at 1,000/s (bench/online.py's
  generator, medians of 3 rounds, 2026-12-06, commit 4ba2445): p99 3.4-3.8 ms against 0.7-1.0 with
  waits off, p50 and CPU the same (0.24-0.27 ms a request both ways). Counting only waits that
  gather two or more as company (or any batch of three or more) removed that tail (p99 ~1.5 ms)
  but also the saving at 2,000/s, where most waits gather one: CPU 0.184 -> 0.233 ms a request,
  what waits off costs (0.238). The p99 target at 1,000/s is 5 ms, the CPU one at 2,000/s 0.4:
  the rule stays. Measured with two workers on a slower hour (bench/online.py, medians of 3
  rounds, 2026-12-06): at 2,000/s a scoring call gathers ~4.4 requests instead of ~3.2 with the earlier
  rule (2 ms, waiting while the gap is below one wait), and a request costs 0.39 ms of server
  CPU instead of 0.43 (the metrics' tallies included), for a p50 of 4.1 ms
  instead of 2.9 (p99 9.4 and 5.9; the target there is 25). uvloop's timers count whole
  milliseconds (a 1 ms wait is 0-1 ms), so 1 ms gathers too little. 0 gives the lowest latency
  under load.

A batch holds at most `max_ids` customers (SKEWLESS_BATCH_MAX_IDS); further requests start the
next one. `/predict/batch` is a batch already and calls `Service.predict` directly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from online.metrics import BATCH_SIZE, tally
from online.schemas import PredictionRow

if TYPE_CHECKING:
    from online.service import Service


@dataclass
class _Batch:
    ids: list[int]
    include_features: list[bool]
    futures: list[asyncio.Future]
    full: asyncio.Future | None = None  # done when max_ids are waiting (only when the leader waits on a timer)


class PredictBatcher:
    """Gathers one worker's concurrent single-customer predictions (one instance per worker)."""

    MAX_SKIP = 256  # leaders that go at once at most, after waits that gathered nobody
    GAP_WEIGHT = 1 / 16  # of the newest gap between arrivals in their running mean

    def __init__(self, max_ids: int, max_wait_s: float = 0.0):
        self.max_ids = max_ids
        self.max_wait_s = max_wait_s
        self._open: _Batch | None = None  # the batch being gathered, None while none is
        self._last_arrival = float("-inf")
        # running mean of the time between two requests' arrivals, seconds; a gap of four waits
        # or more counts as four (idle all the same), so that ~20 requests after a quiet spell tell load
        self._idle_gap = 4 * max_wait_s
        self._gap = self._idle_gap
        self._skip = 0  # leaders to go at once before one tries waiting again
        self._backoff = 1  # what _skip becomes after the next wait that gathers nobody
        self._sizes = tally(BATCH_SIZE)

    async def predict(self, service: Service, customer_id: int, include_features: bool = False) -> PredictionRow:
        """The prediction for one customer, scored together with whatever else is ready now."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        self._gap += self.GAP_WEIGHT * (min(now - self._last_arrival, self._idle_gap) - self._gap)
        self._last_arrival = now
        future = loop.create_future()
        batch = self._open
        if batch is not None:  # join the batch being gathered
            batch.ids.append(customer_id)
            batch.include_features.append(include_features)
            batch.futures.append(future)
            if len(batch.ids) >= self.max_ids:
                self._open = None  # full: the next request leads a new one
                if batch.full is not None and not batch.full.done():
                    batch.full.set_result(None)
            return await future

        batch = _Batch([customer_id], [include_features], [future])
        if self.max_ids == 1:  # batching off: every request alone, at once
            self._score(service, batch, waited=False)
            return future.result()
        self._open = batch
        waited = self._should_wait()
        try:
            if waited:
                batch.full = loop.create_future()
                timer = loop.call_later(self.max_wait_s, _done, batch.full)
                try:
                    await batch.full
                finally:
                    timer.cancel()
            else:
                await asyncio.sleep(0)  # one turn of the loop: the requests already scheduled join
        finally:
            if self._open is batch:
                self._open = None
            self._score(service, batch, waited)  # also when the leader was cancelled: the followers still get answers
        return future.result()

    def _should_wait(self) -> bool:
        """Whether this leader waits for more: a wait is configured, requests come often enough
        to fill it, and no wait that gathered nobody told leaders to go at once for a while."""
        if self.max_wait_s <= 0 or 2 * self._gap > self.max_wait_s:
            return False
        if self._skip:
            self._skip -= 1
            return False
        return True

    def _score(self, service: Service, batch: _Batch, waited: bool) -> None:
        """Score the batch and resolve every request's future (an error goes to each of them)."""
        n = len(batch.ids)
        if n > 1:  # company came, with or without a wait: let the next leader wait
            self._skip, self._backoff = 0, 1
        elif waited:  # waited for nobody: the next leaders go at once, more of them each time
            self._skip, self._backoff = self._backoff, min(2 * self._backoff, self.MAX_SKIP)
        self._sizes.observe(n)
        try:
            predictions = service.predict(batch.ids, batch.include_features)
        except Exception as exc:
            for f in batch.futures:
                if not f.done():
                    f.set_exception(exc)
            return
        for f, p in zip(batch.futures, predictions):
            if not f.done():  # a follower whose request was cancelled meanwhile
                f.set_result(p)


def _done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
