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
- `max_wait_s` > 0 (SKEWLESS_BATCH_WAIT_MS) lets a leader wait that long for more requests, but
  only while the worker is under load (its previous batch held more than one request) and only
  until `max_ids` are waiting, so that a lone request at low load still goes at once.

A batch holds at most `max_ids` customers (SKEWLESS_BATCH_MAX_IDS); further requests start the
next one. `/predict/batch` is a batch already and calls `Service.predict` directly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serving.metrics import BATCH_SIZE
from serving.schemas import Prediction

if TYPE_CHECKING:
    from serving.service import Service


@dataclass
class _Batch:
    ids: list[int]
    include_features: list[bool]
    futures: list[asyncio.Future]
    full: asyncio.Event | None = None  # set when max_ids are waiting (only when the leader waits on a timer)


class PredictBatcher:
    """Gathers one worker's concurrent single-customer predictions (one instance per worker)."""

    def __init__(self, max_ids: int, max_wait_s: float = 0.0):
        self.max_ids = max_ids
        self.max_wait_s = max_wait_s
        self._open: _Batch | None = None  # the batch being gathered, None while none is
        self._last_size = 1

    async def predict(self, service: Service, customer_id: int, include_features: bool = False) -> Prediction:
        """The prediction for one customer, scored together with whatever else is ready now."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        batch = self._open
        if batch is not None:  # join the batch being gathered
            batch.ids.append(customer_id)
            batch.include_features.append(include_features)
            batch.futures.append(future)
            if len(batch.ids) >= self.max_ids:
                self._open = None  # full: the next request leads a new one
                if batch.full is not None:
                    batch.full.set()
            return await future

        batch = _Batch([customer_id], [include_features], [future])
        if self.max_ids == 1:  # batching off: every request alone, at once
            self._score(service, batch)
            return future.result()
        self._open = batch
        try:
            if self.max_wait_s > 0 and self._last_size > 1:
                batch.full = asyncio.Event()
                try:
                    await asyncio.wait_for(batch.full.wait(), self.max_wait_s)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # one turn of the loop: the requests already scheduled join
        finally:
            if self._open is batch:
                self._open = None
            self._score(service, batch)  # also when the leader was cancelled: the followers still get answers
        return future.result()

    def _score(self, service: Service, batch: _Batch) -> None:
        """Score the batch and resolve every request's future (an error goes to each of them)."""
        self._last_size = n = len(batch.ids)
        BATCH_SIZE.observe(n)
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
