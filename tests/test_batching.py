"""Dynamic batching (online/batching.py) on the real app, Redis and model: concurrent /predict
requests are scored together, and each still gets exactly the answer it gets alone."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.feature_log import read_log
from feast_plugins.redis_server import throwaway_redis
from online.app import create_app, lifespan
from online.settings import Settings
from skewless.score import score
from skewless.store import REDIS_ENV


def _settings(live, tmp_path, **kw) -> Settings:
    return Settings(repo_path=live.repo, model_dir=live.model_dir, feature_log_dir=tmp_path / "log", feature_log_flush_s=0.2, **kw)


async def _concurrently(app, requests: list[tuple[int, bool]]) -> list[httpx.Response]:
    """POST /predict for every (customer, include_features) at once, through the app's lifespan."""
    async with lifespan(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            return await asyncio.gather(*(
                client.post("/predict" + ("?include_features=true" if inc else ""), json={"customer_id": c}) for c, inc in requests
            ))


def _batch_sizes() -> tuple[float, float]:
    """(scoring calls, customers) of POST /predict so far, from the app's own metrics."""
    from online.metrics import render

    text = render()[0].decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) if f.name == "skewless_predict_batch_size" for s in f.samples}
    return samples["skewless_predict_batch_size_count"], samples["skewless_predict_batch_size_sum"]


def test_concurrent_requests_are_scored_together_with_their_own_answers(live, known, tmp_path):
    ids = [known["fresh"], known["unknown"], known["expired"], known["fresh"]] * 5
    requests = [(c, i % 3 == 0) for i, c in enumerate(ids)]

    calls0, _ = _batch_sizes()
    alone = asyncio.run(_concurrently(create_app(_settings(live, tmp_path / "a", batch_max_ids=1)), requests))
    calls, customers0 = _batch_sizes()
    assert calls - calls0 == len(requests)  # batching off: one scoring call a request
    calls0 = calls
    batched_app = create_app(_settings(live, tmp_path / "b"))
    together = asyncio.run(_concurrently(batched_app, requests))
    calls, customers = _batch_sizes()

    assert customers - customers0 == len(requests)
    assert calls - calls0 < len(requests) / 2, "concurrent requests were not gathered"
    for (c, inc), a, b in zip(requests, alone, together):
        assert (a.status_code, b.status_code) == ((404, 404) if c == known["unknown"] else (200, 200)), (c, a.text, b.text)
        if a.status_code != 200:
            continue
        a, b = a.json(), b.json()
        assert ("features" in b) == inc and b["customer_id"] == c and b["model_version"] == a["model_version"]
        # the same customer's answer; the two runs are a moment apart, which moves the time-derived features a little
        assert b["churn_probability"] == pytest.approx(a["churn_probability"], abs=1e-6)
        if inc:
            assert list(b["features"]) == list(a["features"])
            for name, v in b["features"].items():
                w = a["features"][name]
                assert v == (pytest.approx(w, rel=1e-4) if isinstance(w, float) else w), name
            # and the probability is exactly the model's for the features this request was given
            assert score(live.bundle, {k: [v] for k, v in b["features"].items()}).probability[0] == b["churn_probability"]
    # one log row per customer answered, batched or not
    time.sleep(0.5)
    found = sum(1 for c, _ in requests if c != known["unknown"])
    assert len(read_log(tmp_path / "b" / "log")) == found


def test_a_lone_request_never_waits(live, known, tmp_path):
    """With a wait configured, a request at low load still goes at once (the wait is for load)."""
    app = create_app(_settings(live, tmp_path, batch_wait_ms=50))

    async def one_by_one():
        async with lifespan(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
                await client.post("/predict", json={"customer_id": known["fresh"]})
                t = time.perf_counter()
                for _ in range(20):
                    assert (await client.post("/predict", json={"customer_id": known["fresh"]})).status_code == 200
                return time.perf_counter() - t

    assert asyncio.run(one_by_one()) < 20 * 0.05  # had each waited its 50 ms, 1 s at least


def test_a_steady_stream_waits_and_is_gathered(live, known, tmp_path):
    """Requests arriving one every 2 ms, never together: with a 10 ms wait they are scored in groups."""
    app = create_app(_settings(live, tmp_path, batch_wait_ms=10))

    async def stream(n: int) -> list[int]:
        async with lifespan(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
                tasks = []
                for _ in range(n):
                    tasks.append(asyncio.ensure_future(client.post("/predict", json={"customer_id": known["fresh"]})))
                    await asyncio.sleep(0.002)
                return [r.status_code for r in await asyncio.gather(*tasks)]

    calls0, customers0 = _batch_sizes()
    assert asyncio.run(stream(150)) == [200] * 150
    calls, customers = _batch_sizes()
    assert customers - customers0 == 150
    assert calls - calls0 < 150 / 2, "a steady stream was not gathered"


def test_one_client_at_a_time_almost_never_waits(live, known, tmp_path):
    """Behind a client that sends the next request only after the answer, waits gather nobody:
    after one that did, the next 1, 2, 4, ... go at once, so 200 requests pay only a few waits."""

    async def one_by_one(app, n: int) -> float:
        async with lifespan(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
                t = time.perf_counter()
                for _ in range(n):
                    assert (await client.post("/predict", json={"customer_id": known["fresh"]})).status_code == 200
                return time.perf_counter() - t

    at_once = asyncio.run(one_by_one(create_app(_settings(live, tmp_path / "a", batch_wait_ms=0)), 200))
    waiting = asyncio.run(one_by_one(create_app(_settings(live, tmp_path / "b", batch_wait_ms=20)), 200))
    assert waiting - at_once < 25 * 0.02, f"{waiting:.2f} s against {at_once:.2f} s: more than 25 of 200 requests waited"


def test_a_batch_without_redis_answers_each_request_503(live, known, tmp_path, monkeypatch):
    with throwaway_redis() as endpoint:
        monkeypatch.setenv(REDIS_ENV, endpoint.feast)
    # that Redis is gone now
    responses = asyncio.run(_concurrently(create_app(_settings(live, tmp_path)), [(known["fresh"], False)] * 8))
    assert [r.status_code for r in responses] == [503] * 8
    assert all("unavailable" in r.json()["detail"] for r in responses)
