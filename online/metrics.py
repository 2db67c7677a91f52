"""Prometheus metrics of the service (one registry per process; scrape each worker)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

REQUESTS = Histogram("skewless_request_seconds", "HTTP request latency.", ["route", "method", "status"], buckets=LATENCY_BUCKETS)
FEATURE_LOOKUP = Histogram("skewless_feature_lookup_seconds", "Online feature lookup through Feast, incl. on-demand transform.", buckets=LATENCY_BUCKETS)
MODEL = Histogram("skewless_model_seconds", "Scoring with the bundle.", buckets=LATENCY_BUCKETS)
FEATURE_AGE = Histogram(
    "skewless_feature_age_seconds", "Age of the oldest feature-view row used for a prediction.",
    buckets=(60, 3600, 6 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400, 365 * 86400),
)
ERRORS = Counter("skewless_errors_total", "Errors by kind.", ["kind"])
FEATURE_LOG_DROPPED = Counter("skewless_feature_log_dropped_total", "Served rows not logged because the log queue was full.")
