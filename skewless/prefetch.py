"""Iterate in a background thread, a few items ahead of the consumer.

For producers that release the GIL while they work (DuckDB, Feast's DuckDB offline store):
batch retrieval runs a chunk ahead of scoring, materialization reads the next batch while the
previous one is encoded and written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class _Failure:
    exc: BaseException


def prefetch(
    items: Iterator[T],
    depth: int = 1,
    step: Callable[[], AbstractContextManager] = nullcontext,
    name: str = "prefetch",
) -> Iterator[T]:
    """`items`, produced by a thread up to `depth` ahead; each production runs inside `step()`
    (a stage timer, say).

    An error in the thread is raised here, in the consumer. When the consumer stops early (an
    error of its own, or closing this generator), the thread is told to stop and joined, then
    `items` is closed, so whatever it holds (a DuckDB connection) is released.
    """
    done, stop = object(), threading.Event()
    ready: queue.Queue = queue.Queue(maxsize=depth)

    def put(item) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            while not stop.is_set():
                with step():
                    item = next(items, done)
                put(item)
                if item is done:
                    return
        except BaseException as exc:  # noqa: BLE001  (handed to the consumer, raised there)
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()
