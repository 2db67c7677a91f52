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
    "skewless_predict_batch_size", "Customers per scoring call of POST /predict: concurrent requests gathered into one (serving/batching.py).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128),
)
MODEL = Histogram("skewless_model_seconds", "Scoring with the bundle (training/score.py), per request.", buckets=LATENCY_BUCKETS)
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


def render() -> tuple[bytes, str]:
    """The exposition text for a scrape: every worker's values in multiprocess mode."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
