"""Prometheus metrics of `skewless stream` (served on its own /metrics, --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # no `_created` series: nothing reads them
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

EVENT_TO_FEATURE = Histogram(
    "skewless_stream_event_to_feature_seconds", "From an event reaching the bus to its state being readable online.", buckets=LATENCY_BUCKETS)
EVENT_TO_SCORE = Histogram(
    "skewless_stream_event_to_score_seconds", "From an event reaching the bus to the new score being published.", buckets=LATENCY_BUCKETS)
EVENTS = Counter("skewless_stream_events_total", "Events by outcome: applied, unchanged (no state change), dead (dead-lettered).", ["outcome"])
DEAD_LETTERS = Counter("skewless_stream_dead_letters_total", "Dead letters by reason.", ["reason"])
SCORES = Counter("skewless_stream_scores_total", "Scores published.")
LAG = Gauge("skewless_stream_consumer_lag", "Entries in the stream not yet delivered to the consumer group.")
WAITING = Gauge("skewless_stream_waiting", "1 while the consumer leaves events on the bus because a view it reads is not loaded in this Redis.")
