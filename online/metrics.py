"""Prometheus metrics of the service.

With several uvicorn workers each process has its own counters, and a scrape of /metrics lands
on one of them at random. `skewless serve --workers N` therefore sets PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode) before the workers start, and /metrics aggregates every
worker's values from there.

The mode is fixed when this module is imported, which is when prometheus-client picks where
values live: importing `feast.metrics` (Feast does it lazily, inside get_online_features) sets
PROMETHEUS_MULTIPROC_DIR to a temp dir of its own in os.environ, and reading the variable at
scrape time would then aggregate that empty directory instead of this process's metrics.
"""

from __future__ import annotations

import atexit
import threading
import time
from bisect import bisect_left

from prometheus_client import values
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # no `_created` series: they double the scrape and nothing here reads them

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus-client's own choice, made when it was imported (MutexValue = in this process only)
MULTIPROCESS = values.ValueClass is not values.MutexValue
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
AGE_BUCKETS = (60, 600, 3600, 6 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 90 * 86400, 365 * 86400)

REQUESTS = Histogram(
    "skewless_request_seconds", "HTTP request latency in the server, by route template and status.",
    ["route", "method", "status"], buckets=LATENCY_BUCKETS,
)
FEATURE_LOOKUP = Histogram(
    "skewless_feature_lookup_seconds", "Online store read through Feast (Redis, TTL), per request.", buckets=LATENCY_BUCKETS
)
ON_DEMAND = Histogram(
    "skewless_on_demand_seconds", "On-demand feature view transform (the registry's own), per request.", buckets=LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "skewless_predict_batch_size", "Customers per scoring call of POST /predict: concurrent requests gathered into one (online/batching.py).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128),
)
MODEL = Histogram("skewless_model_seconds", "Scoring with the bundle (skewless/score.py), per request.", buckets=LATENCY_BUCKETS)
EXPLAIN = Histogram("skewless_explain_seconds", "Explaining the scores (skewless/explain.py), per request that asked.", buckets=LATENCY_BUCKETS)
FEATURE_AGE = Histogram(
    "skewless_feature_age_seconds", "Age of the oldest feature-view row a request used (request time - event time), by view.",
    ["view"], buckets=AGE_BUCKETS,
)
PREDICTIONS = Counter("skewless_predictions_total", "Customers scored, by outcome.", ["outcome"])
ERRORS = Counter("skewless_errors_total", "Errors by kind.", ["kind"])
FEATURE_LOG_WRITTEN = Counter("skewless_feature_log_rows_written_total", "Served rows written to the feature log.")
FEATURE_LOG_DROPPED = Counter(
    "skewless_feature_log_dropped_total", "Served rows not logged: the in-memory buffer was full or a write failed."
)
FEATURE_WATERMARK_AGE = Gauge(
    "skewless_feature_watermark_age_seconds",
    "Per feature view: now - the time up to which the online store holds it (its watermark); -1 when it holds none that counts.",
    ["view"], multiprocess_mode="mostrecent",
)
SCORE_ANSWERS = Counter(
    "skewless_score_answers_total", "Stored scores asked for by ID, by outcome: current, stale (past the budget, not served), not_found. "
    "The share of stale answers is rate(...{outcome=\"stale\"}) / rate(...).", ["outcome"],
)
SCORE_RUN_AGE = Gauge(
    "skewless_score_run_age_seconds", "Per model: now - the as-of of the newest full batch run this Redis serves; -1 when none.",
    ["model"], multiprocess_mode="mostrecent",
)
MODEL_LOADS = Counter("skewless_model_loads_total", "Model bundles loaded: at start, and each rollout swapped in.")
MODEL_REFUSED = Counter("skewless_model_rollouts_refused_total", "New bundles refused at rollout (verification failed); the old one kept serving.")
MODEL_INFO = Gauge(
    "skewless_model_info", "The bundle being served (value 1).", ["model_name", "model_version", "feature_service"],
    multiprocess_mode="max",
)


FLUSH_S = 1.0  # how often a process hands its tallies to prometheus-client (and before each scrape it answers)


class Tally:
    """A histogram's or a counter's updates on the request path, added up in this process and
    handed to prometheus-client in bulk.

    In multiprocess mode (`skewless serve --workers N`) every update is a locked write to an
    mmap'd file: 2.6-5.4 us a histogram observation, 2.3-2.7 a counter increment
    (bench/request_parts.py), and a /predict makes ~9 of them (~3% of its CPU). Here an update
    is a bisect and an addition or two under a lock (~1.1 us an observation, ~0.7 an increment,
    the same bench); `flush` adds what came since the last one to the
    Prometheus child: every FLUSH_S on a background thread, before each scrape this process
    answers, and at exit. The exposition is unchanged (same series, buckets, sums); a scrape
    may miss up to FLUSH_S of another worker's updates.
    """

    def __init__(self, child):
        self.child = child
        self.bounds = list(getattr(child, "_upper_bounds", ()))  # a histogram's, +Inf last; none for a counter
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Histogram.observe: counted in the first bucket whose bound is not below `value`
        (the service's values are durations, ages and sizes, never NaN)."""
        i = bisect_left(self.bounds, value)
        with self.lock:
            self.counts[i] += 1
            self.total += value

    def inc(self, amount: float = 1) -> None:
        """Counter.inc."""
        with self.lock:
            self.total += amount

    def flush(self) -> None:
        with self.lock:
            counts, total = self.counts, self.total
            if total == 0 and not any(counts):
                return
            self.counts, self.total = [0] * len(counts), 0.0
        if not self.bounds:
            self.child.inc(total)
            return
        self.child._sum.inc(total)  # what Histogram.observe updates, once per flush instead of per observation
        for bucket, count in zip(self.child._buckets, counts):
            if count:
                bucket.inc(count)


_tallies: dict[int, Tally] = {}  # by id of the Prometheus child (which its metric keeps alive)
_tallies_lock = threading.Lock()


def tally(child) -> Tally:
    """The Tally of a histogram or counter child (one per child); the first one starts the flusher."""
    with _tallies_lock:
        found = _tallies.get(id(child))
        if found is None:
            if not _tallies:
                threading.Thread(target=_flush_every, name="metrics-flush", daemon=True).start()
                atexit.register(flush)
            found = _tallies[id(child)] = Tally(child)
        return found


def flush() -> None:
    """Hand every tally's updates to prometheus-client."""
    with _tallies_lock:
        pending = list(_tallies.values())
    for t in pending:
        t.flush()


def _flush_every() -> None:
    while True:
        time.sleep(FLUSH_S)
        flush()


def render() -> tuple[bytes, str]:
    """The exposition text for a scrape: every worker's values in multiprocess mode."""
    flush()
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
