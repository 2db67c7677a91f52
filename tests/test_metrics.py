"""The request path's metrics go through tallies (online/metrics.py:Tally): once flushed, a
scrape shows exactly what observing each value directly would have shown."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from online.metrics import LATENCY_BUCKETS, REQUESTS, Tally, render, tally


def _samples(registry: CollectorRegistry) -> dict:
    """Every sample of a registry but the creation times (which differ between two registries)."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples if not s.name.endswith("_created")}


def _twins(registry_a: CollectorRegistry, registry_b: CollectorRegistry):
    return (Histogram("h_seconds", "h", ["route"], buckets=LATENCY_BUCKETS, registry=registry_a),
            Histogram("h_seconds", "h", ["route"], buckets=LATENCY_BUCKETS, registry=registry_b))


def test_a_flushed_histogram_tally_exposes_what_direct_observations_do():
    direct_registry, tallied_registry = CollectorRegistry(), CollectorRegistry()
    direct, tallied = _twins(direct_registry, tallied_registry)
    # on the bounds, between them, past the last, zero and below it
    values = [0.0005, 0.001, 0.0011, 0.002, 2.5, 3.0, 1e9, 0.0, -1.0, 0.00049] + [0.0042] * 7
    t = Tally(tallied.labels(route="/predict"))
    for v in values[:9]:
        direct.labels(route="/predict").observe(v)
        t.observe(v)
    t.flush()
    for v in values[9:]:  # a second flush adds to the first
        direct.labels(route="/predict").observe(v)
        t.observe(v)
    t.flush()
    t.flush()  # nothing new: nothing changes
    # the counts exactly; the sum up to rounding (added up in another order)
    assert _samples(tallied_registry) == pytest.approx(_samples(direct_registry), rel=1e-12, abs=0)


def test_a_counter_tally_adds_up_and_flushes():
    direct_registry, tallied_registry = CollectorRegistry(), CollectorRegistry()
    direct = Counter("c_total", "c", registry=direct_registry)
    t = Tally(Counter("c_total", "c", registry=tallied_registry))
    for amount in (1, 1, 5, 0, 2.5):
        direct.inc(amount)
        t.inc(amount)
    t.flush()
    assert _samples(tallied_registry) == _samples(direct_registry)


def test_a_scrape_of_this_process_includes_what_was_just_observed():
    child = REQUESTS.labels(route="/test-metrics", method="GET", status="200")
    counted = tally(child)
    assert tally(child) is counted  # one tally per child

    def count() -> float:
        text = render()[0].decode()
        line = next((x for x in text.splitlines() if x.startswith("skewless_request_seconds_count") and "/test-metrics" in x), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = count()
    for _ in range(3):
        counted.observe(0.001)
    assert count() == before + 3  # render() flushes first: no wait for the background flush
