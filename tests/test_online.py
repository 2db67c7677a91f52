"""The online service against a real redis-server: predictions, errors, readiness, TTL, logs."""

from __future__ import annotations

import time
from datetime import timedelta

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from online.app import create_app
from monitoring.feature_log import read_log
from feast_plugins.redis_server import free_port, throwaway_redis
from online.settings import Settings
from synthetic.generate import ACTIVITY_FILE
from skewless.store import REDIS_ENV


def make_settings(live, tmp_path) -> Settings:
    return Settings(repo_path=live.repo, model_dir=live.model_dir, feature_log_dir=tmp_path / "log", feature_log_flush_s=0.2)


@pytest.fixture()
def client(live, tmp_path):
    with TestClient(create_app(make_settings(live, tmp_path))) as c:
        yield c


@pytest.fixture()
def own_redis(live, monkeypatch):
    """A throwaway redis-server of the test's own, loaded up to now: the test may stop or reconfigure it."""
    from datetime import datetime, timezone

    from feast_plugins.materialize import materialize
    from skewless.store import open_store

    with throwaway_redis() as endpoint:
        monkeypatch.setenv(REDIS_ENV, endpoint.feast)
        materialize(open_store(live.repo), datetime.now(timezone.utc))
        yield endpoint


def test_predict_single(client, known, live):
    r = client.post("/predict", json={"customer_id": known["fresh"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"customer_id", "churn_probability", "churn_prediction", "risk_segment", "model_name", "model_version", "features_as_of"}
    assert body["model_version"] == live.bundle.version and 0 <= body["churn_probability"] <= 1
    assert "features" not in body
    with_features = client.post("/predict?include_features=true", json={"customer_id": known["fresh"]}).json()
    assert list(with_features["features"]) == live.bundle.feature_names
    assert with_features["features"]["logins_7d"] is not None


def test_predict_batch_keeps_order_and_marks_not_found(client, known):
    ids = [known["expired"], known["unknown"], known["fresh"]]
    r = client.post("/predict/batch", json={"customer_ids": ids})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["customer_id"] for p in preds] == ids
    assert [p["status"] for p in preds] == ["ok", "not_found", "ok"]


def test_unknown_customer_is_404(client, known):
    r = client.post("/predict", json={"customer_id": known["unknown"]})
    assert r.status_code == 404 and "no features" in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [{"customer_id": "42"}, {"customer_id": 4.5}, {}, {"customer_id": -1}, {"customer_id": 2**63}, {"customer_id": None}, [1, 2]],
)
def test_bad_single_requests_are_422(client, body):
    r = client.post("/predict", json=body)
    assert r.status_code == 422 and r.json()["detail"]


def test_bad_batch_requests_are_422(client):
    assert client.post("/predict/batch", json={"customer_ids": list(range(1001))}).status_code == 422
    assert client.post("/predict/batch", json={"customer_ids": []}).status_code == 422
    assert client.post("/predict/batch", json={"customer_ids": [1, "x"]}).status_code == 422
    assert client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


def test_online_applies_the_view_ttl(client, known, live):
    """Redis still holds the expired activity row; the service must not use it, nor may any
    reader of the repo's store (feature_store.yaml names the TTL-applying Redis store)."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    def logins(store):
        rows = [{"customer_id": known["expired"]}]
        return store.get_online_features(features=["customer_activity:logins_7d"], entity_rows=rows).to_dict()["logins_7d"][0]

    provider = live.store._get_provider()
    assert type(provider.online_store).__name__ == "TTLRedisOnlineStore"
    assert logins(live.store) is None
    ttl_store, provider._online_store = provider.online_store, RedisOnlineStore()
    try:
        assert logins(live.store) is not None  # Feast's stock Redis read ignores the TTL
    finally:
        provider._online_store = ttl_store
    feats = client.post("/predict?include_features=true", json={"customer_id": known["expired"]}).json()["features"]
    assert feats["logins_7d"] is None and feats["days_since_last_active"] is None
    assert feats["plan"] is not None  # the profile view's TTL is long


def test_fast_read_equals_feast_get_online_features(live, known):
    """The service's own Redis read (online/features.py:RedisReader + the registry's transform)
    gives exactly what Feast's get_online_features(FeatureService) gives through the TTL store:
    every customer of the data, expired, unknown and negative IDs, one at a time and in batches."""
    from datetime import datetime, timezone

    from online.features import FeatureLookup, connect_store

    store, _ = connect_store(live.repo, None, timeout_s=5, retries=1)
    lookup = FeatureLookup(store, live.bundle.feature_service)
    assert lookup.reader is not None  # the fast path is the one in use
    ids = pd.read_parquet(live.repo / "data" / ACTIVITY_FILE, columns=["customer_id"])["customer_id"].unique().tolist()
    ids += [known["expired"], known["unknown"], 0, 2**63 - 1]
    now = datetime.now(timezone.utc)
    assert len(ids) > 500  # one read of several hundred customers too
    for batch in [ids[:1], [known["expired"]], [known["unknown"]], ids[:100], ids]:
        fast, feast = lookup._fast(batch, now), lookup.via_feature_service(batch, now)
        assert fast.found == feast.found
        assert fast.view_ts.keys() == feast.view_ts.keys()
        for view in fast.view_ts:  # Feast reports event times in whole seconds
            assert [int(t) for t in fast.view_ts[view]] == [int(t) for t in feast.view_ts[view]], view
        for name in lookup.names:
            a, b = fast.values[name], feast.values[name]
            assert a == b and [type(x) for x in a] == [type(x) for x in b], name
    assert sum(fast.found) > 500 and not all(fast.found)


def test_the_readers_own_pipeline_is_what_redis_py_sends_and_reads(live, known):
    """RedisReader packs its HMGETs itself (online/features.py:_hmget): the bytes are redis-py's
    for the same command, and the replies equal redis-py's, through the kept connection and
    through the client (the way a second thread reading at the same time goes)."""
    from online.features import FeatureLookup, connect_store

    store, _ = connect_store(live.repo, None, timeout_s=5, retries=1)
    reader = FeatureLookup(store, live.bundle.feature_service).reader
    keys = [reader.key_layout.key(c) for c in (known["fresh"], known["expired"], known["unknown"], 0, 2**63 - 1)]
    conn = reader.client.connection_pool.make_connection()
    for key in keys:
        ours = reader._resp_head + b"$%d\r\n%s\r\n" % (len(key), key) + reader._resp_tail
        assert ours == b"".join(conn.pack_command("HMGET", key, *reader.fields))
    expected = [reader.client.hmget(key, reader.fields) for key in keys]
    assert reader._hmget(keys) == expected == reader._hmget_via_client(keys)
    with reader._conn_lock:  # another thread is reading on the kept connection
        assert reader._hmget(keys) == expected and reader._hmget(keys[:1]) == expected[:1]
    assert reader._hmget(keys[1:2]) == expected[1:2]


def test_model_is_loaded_once_and_metrics_count(live, known, tmp_path, monkeypatch):
    import online.service

    loads = []
    real_load = online.service.load_bundle
    monkeypatch.setattr(online.service, "load_bundle", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    with TestClient(create_app(make_settings(live, tmp_path))) as client:
        for _ in range(5):
            assert client.post("/predict", json={"customer_id": known["fresh"]}).status_code == 200
        assert len(loads) == 1
        text = client.get("/metrics").text
    counts = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text) if family.name == "skewless_request_seconds"
        for s in family.samples if s.name.endswith("_count")
    }
    assert counts[(("method", "POST"), ("route", "/predict"), ("status", "200"))] >= 5
    assert "skewless_feature_lookup_seconds_count" in text and "skewless_model_seconds_count" in text


def test_health_ready_and_docs(client):
    assert client.get("/health").json() == {"status": "alive"}
    assert client.get("/ready").json()["ready"] is True
    for path in ("/health", "/ready"):  # what load balancers and uptime checks send
        r = client.head(path)
        assert r.status_code == 200 and r.content == b""
    paths = client.get("/openapi.json").json()["paths"]
    assert "/predict" in paths and set(paths["/health"]) == {"get"}


def test_redis_down_fails_fast_and_recovers(live, known, tmp_path, monkeypatch):
    from datetime import datetime, timezone

    from feast_plugins.materialize import materialize
    from skewless.store import open_store

    port = free_port()
    with throwaway_redis(port) as endpoint:
        monkeypatch.setenv(REDIS_ENV, endpoint.feast)
        with TestClient(create_app(make_settings(live, tmp_path))) as c:
            r = c.get("/ready")
            assert r.status_code == 503 and "no watermark" in r.json()["reason"]  # answering, but holds nothing
            materialize(open_store(live.repo), datetime.now(timezone.utc))
            assert c.get("/ready").status_code == 200
            assert c.post("/predict", json={"customer_id": known["fresh"]}).status_code == 200
    # That server is stopped now: the app must answer 503 fast and stay up.
    monkeypatch.setenv(REDIS_ENV, endpoint.feast)
    with TestClient(create_app(make_settings(live, tmp_path))) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and "Redis" in r.json()["reason"]
        t = time.perf_counter()
        r = c.post("/predict", json={"customer_id": 1})
        assert r.status_code == 503 and "unavailable" in r.json()["detail"]
        assert time.perf_counter() - t < 1.0
        with throwaway_redis(port):  # a Redis is back on the same port, empty: no restart of the app needed
            r = c.get("/ready")
            assert r.status_code == 503 and "no watermark" in r.json()["reason"]
            r = c.post("/predict", json={"customer_id": known["fresh"]})  # answering, but empty: not a 404 for this customer
            assert r.status_code == 503 and "not materialized into this Redis" in r.json()["detail"], r.text


def test_a_hung_redis_never_hands_a_late_reply_to_the_next_request(live, known, tmp_path, own_redis):
    """A read that timed out leaves its reply on the way: the connection it used is closed, so
    the next customer's request never reads that reply as its own (online/features.py:_hmget)."""
    import os
    import signal

    with TestClient(create_app(make_settings(live, tmp_path).model_copy(update={"redis_cooldown_s": 0}))) as c:
        def answer(cid: int) -> tuple[int, dict]:
            r = c.post("/predict", json={"customer_id": cid})
            return r.status_code, {k: v for k, v in r.json().items() if k != "features_as_of"}  # the request's time

        def answers(ids: list[int]) -> tuple[int, list]:
            r = c.post("/predict/batch", json={"customer_ids": ids})
            return r.status_code, [{k: v for k, v in p.items() if k != "features_as_of"} for p in r.json().get("predictions", [])]

        first, second = known["fresh"], known["expired"]
        expected = {cid: answer(cid) for cid in (first, second)}
        assert expected[first] != expected[second]
        batch, reversed_ = [first, second, first], [second, first, second]
        expected_batches = {tuple(ids): answers(ids) for ids in (batch, reversed_)}
        pid = own_redis.client().info("server")["process_id"]
        os.kill(pid, signal.SIGSTOP)  # Redis hangs: the read times out, its reply comes later
        try:
            assert answer(first)[0] == 503
            assert answers(batch)[0] == 503  # three replies on the way
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
        for cid in (second, first, second):
            assert answer(cid) == expected[cid]
        for ids in (reversed_, batch, reversed_):
            assert answers(ids) == expected_batches[tuple(ids)]


def test_a_connection_the_redis_closed_while_idle_is_replaced_without_an_error(live, known, tmp_path, own_redis):
    """Redis closes idle clients after its `timeout`; with no retries configured, the next request
    must still be answered, as redis-py's pool answers it (it checks a connection before use)."""
    own_redis.client().config_set("timeout", 1)
    with TestClient(create_app(make_settings(live, tmp_path).model_copy(update={"redis_retries": 0}))) as c:
        for _ in range(2):
            assert c.post("/predict", json={"customer_id": known["fresh"]}).status_code == 200
            time.sleep(2.5)  # Redis closes the service's connections meanwhile


def test_feature_log_is_flushed_on_shutdown(live, known, tmp_path):
    settings_ = make_settings(live, tmp_path)
    settings_.feature_log_flush_s = 3600  # only the shutdown flush can write it
    with TestClient(create_app(settings_)) as c:
        c.post("/predict", json={"customer_id": known["fresh"]})
        c.post("/predict/batch", json={"customer_ids": [known["fresh"], known["expired"], known["unknown"]]})
    log = read_log(tmp_path / "log").to_pandas()
    assert len(log) == 3  # not_found is not a prediction
    assert set(log.columns) >= {"customer_id", "request_time", "model_version", "churn_probability", *live.bundle.feature_names}


def test_rows_the_log_cannot_take_are_dropped_whole_and_the_rest_logged(live, tmp_path):
    from datetime import datetime, timezone

    from monitoring.feature_log import FeatureLogger, Served

    names = live.bundle.feature_names
    row = {name: [None] for name in names}
    now = datetime.now(timezone.utc)
    logger = FeatureLogger(tmp_path / "log", live.bundle)
    logger.log(Served(now, [1], [0.5], [1], ["High"], {k: v for k, v in row.items() if k != names[0]}))  # a feature short
    logger.log(Served(now, [2, 3], [0.25, 0.75], [0, 1], ["Low", "High"], {k: v * 2 for k, v in row.items()}))
    logger.close()
    assert read_log(tmp_path / "log")["customer_id"].to_pylist() == [2, 3]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["customer_id", "customer_ids", "x"]), c, max_size=3),
                         max_leaves=8),
       path=st.sampled_from(["/predict", "/predict/batch", "/predict?include_features=true"]))
def test_no_body_makes_a_5xx(client, body, path):
    assert client.post(path, json=body).status_code < 500
