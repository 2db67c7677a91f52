"""The near-real-time path against a real redis-server: events in, the same features and scores on every path.

A private copy of the live repo (data ending today, its account-event log and the account
state folded from it), a bundle trained on churn_v2 (churn_v1 and the live features), a private
Redis loaded with every view. Events go onto a Redis Stream; the consumer (in process, or the
real `skewless stream run`) folds them into the state, writes it online and offline, scores.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import copy_repo, feast_apply
from fastapi.testclient import TestClient

from online_store.materialize import materialize
from online_store.redis_server import throwaway_redis
from serving.app import create_app
from serving.settings import Settings
from stream import consumer as consumer_module
from stream.consumer import Consumer
from stream.source import DEAD_STREAM, EVENTS_STREAM, SCORES_STREAM, RedisStreamSource
from training.dataset import historical_features
from training.generate import PROFILES_FILE
from training.score import score
from training.store import REDIS_ENV, open_store

PROB_TOL = 1e-6
LIVE = ["payment_failures_24h", "support_tickets_24h", "hours_since_last_payment_failure", "seats_now"]


@pytest.fixture(scope="module")
def env(live, tmp_path_factory, redis_endpoint):
    from training.train import train

    root = tmp_path_factory.mktemp("stream")
    repo = copy_repo(root / "feature_repo")
    shutil.rmtree(repo / "data")
    shutil.copytree(live.repo / "data", repo / "data", ignore=shutil.ignore_patterns("registry.db"))
    assert feast_apply(repo, redis_endpoint).returncode == 0
    with throwaway_redis() as endpoint:
        saved = os.environ.get(REDIS_ENV)
        os.environ[REDIS_ENV] = endpoint.feast
        try:
            store = open_store(repo)
            models = root / "models"
            bundle = train(store, repo, models, feature_service="churn_v2").bundle
            materialize(store, datetime.now(timezone.utc))
            yield SimpleNamespace(repo=repo, store=store, models=models, bundle=bundle, redis=endpoint)
        finally:
            os.environ[REDIS_ENV] = saved or ""


@pytest.fixture()
def streams(env):
    client = env.redis.client()
    for key in (EVENTS_STREAM, SCORES_STREAM, DEAD_STREAM, f"{EVENTS_STREAM}:acked:skewless-stream"):
        client.delete(key)
    return client


def customers(env, n: int, seed: int) -> list[int]:
    ids = pd.read_parquet(env.repo / "data" / PROFILES_FILE, columns=["customer_id"])["customer_id"].drop_duplicates()
    return ids.sample(n, random_state=seed).astype(int).tolist()


def publish(client, event_id, customer_id, event_type, at: datetime, amount=None, **extra) -> str:
    fields = {"event_id": event_id, "customer_id": customer_id, "event_type": event_type, "event_time": at.isoformat(), **extra}
    if amount is not None:
        fields["amount"] = amount
    return client.xadd(EVENTS_STREAM, fields).decode()


def consume(env, name="consumer-1") -> Consumer:
    c = Consumer(env.store, env.bundle, RedisStreamSource(env.redis.client(), name), consumer=name, flush_s=3600)
    drain(c)
    return c


def drain(c: Consumer) -> None:
    while c.step(100, 10).read:
        pass
    c.settle()


def output(client) -> dict[int, dict]:
    """The newest published score per customer."""
    out = {}
    for _, fields in client.xrange(SCORES_STREAM):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        out[int(f["customer_id"])] = f
    return out


def state_online(env, ids):
    return env.store.get_online_features(features=[f"account_state:{f}" for f in ("live_seats", "payment_failure_times_us", "support_ticket_times_us")],
                                         entity_rows=[{"customer_id": i} for i in ids]).to_dict()


def state_offline(env) -> pd.DataFrame:
    """The newest account-state row per customer in the view's source directory (Feast's order: event time, then created)."""
    frame = pq.read_table(env.repo / "data" / "account_state").to_pandas()
    return frame.sort_values(["event_timestamp", "created"]).groupby("customer_id").last()


def test_pushed_events_reach_training_batch_online_and_the_stream_alike(env, streams, tmp_path):
    from batch.job import run_batch

    c1, c2, c3 = customers(env, 3, seed=21)
    now = datetime.now(timezone.utc)
    late = now - timedelta(minutes=10)
    publish(streams, 1, c1, "payment_failed", late, 120.0)  # late: it happened ten minutes ago
    publish(streams, 1, c1, "payment_failed", late, 120.0)  # the producer sent it twice
    publish(streams, 2, c2, "ticket_opened", now - timedelta(minutes=1))
    publish(streams, 3, c3, "plan_changed", now - timedelta(seconds=30), 7)
    publish(streams, 4, c3, "plan_changed", now - timedelta(minutes=5), 3)  # older, arriving after the newer one
    consume(env)
    dead = streams.xrange(DEAD_STREAM)
    assert len(dead) == 1 and b"duplicate" in dead[0][1][b"reason"]
    scores = output(streams)
    assert set(scores) == {c1, c2, c3}
    # the stream's own scores, at the instant each was computed, against the training path there
    for cid in (c1, c2, c3):
        at = datetime.fromisoformat(scores[cid]["as_of"])
        offline = historical_features(env.store, "churn_v2", pd.DataFrame({"customer_id": [cid], "event_timestamp": [at]}))
        assert abs(float(scores[cid]["churn_probability"]) - score(env.bundle, offline).probability[0]) <= PROB_TOL
        batch = run_batch(env.store, env.bundle, at, pd.Series([cid]), tmp_path / f"{cid}.duckdb", tmp_path / f"p{cid}")
        assert batch.customers == 1
        import duckdb

        with duckdb.connect(str(tmp_path / f"{cid}.duckdb"), read_only=True) as con:
            (p,) = con.execute("SELECT churn_probability FROM churn_predictions").fetchone()
        assert abs(float(scores[cid]["churn_probability"]) - p) <= PROB_TOL
    # /predict now, features included, against the training path at its request time
    settings = Settings(repo_path=env.repo, model_dir=env.models, feature_log=False)
    with TestClient(create_app(settings)) as client:
        served = client.post("/predict/batch?include_features=true", json={"customer_ids": [c1, c2, c3]}).json()["predictions"]
        stored = client.get(f"/scores/{c1}").json()
    at = datetime.fromisoformat(served[0]["features_as_of"])
    offline = historical_features(env.store, "churn_v2", pd.DataFrame({"customer_id": [c1, c2, c3], "event_timestamp": [at] * 3}))
    for p, row in zip(served, offline.itertuples()):
        for name in env.bundle.feature_names:
            a, b = p["features"][name], getattr(row, name)
            assert (a is None and pd.isna(b)) or (isinstance(a, str) and a == b) or abs(float(a) - float(b)) <= 1e-9, (name, a, b)
    offline_p = score(env.bundle, offline).probability
    assert np.abs(np.array([p["churn_probability"] for p in served]) - offline_p).max() <= PROB_TOL
    live = {p["customer_id"]: p["features"] for p in served}
    assert live[c1]["payment_failures_24h"] == 1  # the duplicate counted once
    assert live[c2]["support_tickets_24h"] >= 1
    assert live[c3]["seats_now"] == 7  # the older change did not overwrite the newer one
    assert stored["source"] == "event" and stored["run_id"].startswith("event:")  # the stream's score, by ID


class Crash(BaseException):
    """The process dies here (not an error a handler would catch)."""


@pytest.mark.parametrize("where", ["after staging, before the online write", "after the scores, before the acknowledgement"])
def test_a_consumer_killed_mid_batch_applies_every_event_once_after_a_restart(env, streams, monkeypatch, where):
    ids = customers(env, 6, seed=5)
    now = datetime.now(timezone.utc)
    expected = {cid: {"payment_failure_times_us": set(), "support_ticket_times_us": set()} for cid in ids}
    for i, cid in enumerate(ids * 2):
        at = now - timedelta(seconds=60 - i)
        kind = "payment_failed" if i % 2 else "ticket_opened"
        publish(streams, 1000 + i, cid, kind, at)
        expected[cid]["payment_failure_times_us" if i % 2 else "support_ticket_times_us"].add(int(at.timestamp()) * 1_000_000 + at.microsecond)
    c = Consumer(env.store, env.bundle, RedisStreamSource(env.redis.client(), "crashing"), consumer="crashing", flush_s=3600)
    with monkeypatch.context() as m:
        if where.startswith("after staging"):
            m.setattr(consumer_module, "write_rows", lambda *a, **k: (_ for _ in ()).throw(Crash()))
        else:
            m.setattr(c.source, "ack", lambda deliveries: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            c.step(100, 10)
    restarted = Consumer(env.store, env.bundle, RedisStreamSource(env.redis.client(), "crashing"), consumer="crashing", flush_s=3600)
    restarted.step(deliveries=restarted.source.pending_of_mine(100))
    drain(restarted)
    assert streams.xlen(DEAD_STREAM) == 0  # a redelivery is no duplicate
    assert streams.xpending(EVENTS_STREAM, "skewless-stream")["pending"] == 0
    online = state_online(env, ids)
    offline = state_offline(env)
    for j, cid in enumerate(ids):
        for name, times in expected[cid].items():
            held = online[name][j]
            assert times <= set(held), (cid, name)  # none lost
            assert len(held) == len(set(held)), (cid, name)  # none applied twice
            assert list(offline.loc[cid][name]) == held, (cid, name)  # offline holds what online holds
    assert set(output(streams)) >= set(ids)  # every customer's newest state was scored: no gap


def test_sigkill_of_the_real_consumer_loses_nothing(env, streams, tmp_path):
    skewless = Path(sys.executable).with_name("skewless")
    run_env = dict(os.environ, REDIS_URL=env.redis.url, SKEWLESS_REDIS=env.redis.feast, SKEWLESS_MODEL_DIR=str(env.models))
    cmd = [str(skewless), "stream", "run", "--repo", str(env.repo), "--batch", "5", "--metrics-port", "0", "--flush-s", "0.2"]
    ids = customers(env, 40, seed=9)
    now = datetime.now(timezone.utc)
    expected = {}
    for i, cid in enumerate(ids * 5):
        at = now - timedelta(seconds=300 - i)
        publish(streams, 5000 + i, cid, "payment_failed", at)
        expected.setdefault(cid, set()).add(int(at.timestamp()) * 1_000_000 + at.microsecond)
    proc = subprocess.Popen(cmd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while streams.xlen(SCORES_STREAM) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run: part of the events applied, part not, one batch perhaps half
    proc.wait()
    assert streams.xlen(SCORES_STREAM) < 200, "the consumer finished before the kill: nothing was tested"
    again = subprocess.run([*cmd, "--until-idle", "2"], env=run_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    online = state_online(env, ids)
    offline = state_offline(env)
    for j, cid in enumerate(ids):
        assert expected[cid] <= set(online["payment_failure_times_us"][j])  # none lost
        assert len(online["payment_failure_times_us"][j]) == len(set(online["payment_failure_times_us"][j]))  # none twice
        assert list(offline.loc[cid]["payment_failure_times_us"]) == online["payment_failure_times_us"][j]
    assert streams.xlen(DEAD_STREAM) == 0 and set(output(streams)) >= set(ids)


def test_bad_and_hostile_events_are_dead_lettered_and_the_rest_applied(env, streams):
    (good,) = customers(env, 1, seed=33)
    now = datetime.now(timezone.utc)
    streams.xadd(EVENTS_STREAM, {"customer_id": good, "event_type": "payment_failed", "event_time": now.isoformat()})  # no event_id
    publish(streams, 2, "x", "payment_failed", now)  # not an integer
    publish(streams, 3, good, "refund_issued", now)  # not a type the bus carries
    publish(streams, 4, -1, "payment_failed", now)
    publish(streams, 5, 10**12, "payment_failed", now)  # nobody
    publish(streams, 6, good, "payment_failed", now + timedelta(hours=2))  # from the future
    publish(streams, 7, good, "plan_changed", now)  # seats missing
    streams.xadd(EVENTS_STREAM, {"event_id": 8, "customer_id": good, "event_type": "ticket_opened", "event_time": "yesterday"})
    publish(streams, 10, good, "plan_changed", now, amount="inf")  # int(inf) raises: it must not stop the consumer
    publish(streams, 11, good, "payment_failed", now, amount="nan")
    publish(streams, 9, good, "payment_failed", now - timedelta(seconds=5))  # the one good event
    publish(streams, 9, good, "payment_failed", now - timedelta(seconds=5))  # and a duplicate of it
    consume(env)
    reasons = [f[b"reason"].decode() for _, f in streams.xrange(DEAD_STREAM)]
    assert len(reasons) == 11, reasons
    for expected in ("missing field 'event_id'", "invalid literal", "unknown event_type 'refund_issued'", "outside 0..2^63-1",
                     "unknown customer 1000000000000", "in the future", "plan_changed needs the seats", "Invalid isoformat", "duplicate",
                     "amount 'inf' is not a finite number", "amount 'nan' is not a finite number"):
        assert any(expected in r for r in reasons), (expected, reasons)
    times = state_online(env, [good])["payment_failure_times_us"][0]
    at = now - timedelta(seconds=5)
    assert times.count(int(at.timestamp()) * 1_000_000 + at.microsecond) == 1


def test_publish_refuses_what_the_consumer_would_dead_letter(env, streams):
    from click.testing import CliRunner

    from training.cli import main

    for args, expected in ((["--type", "refund_issued"], "unknown event_type"), (["--type", "plan_changed"], "needs the seats"),
                           (["--type", "plan_changed", "--amount", "inf"], "not a finite number"),
                           (["--type", "payment_failed", "--time", "2099-01-01"], "is in the future")):
        r = CliRunner().invoke(main, ["stream", "publish", "--customer", "5", *args])
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and expected in r.output, r.output
    assert streams.xlen(EVENTS_STREAM) == 0
    r = CliRunner().invoke(main, ["stream", "publish", "--customer", "5", "--type", "plan_changed", "--amount", "3"])
    assert r.exit_code == 0 and streams.xlen(EVENTS_STREAM) == 1, r.output


def test_a_replaced_redis_is_not_consumed_until_its_views_are_loaded(env, streams):
    """An event folded into a state that is not there would start the customer's history over."""
    (c,) = customers(env, 1, seed=55)
    at = datetime.now(timezone.utc) - timedelta(seconds=3)
    with throwaway_redis() as fresh:
        saved = os.environ[REDIS_ENV]
        os.environ[REDIS_ENV] = fresh.feast
        try:
            store = open_store(env.repo)
            client = fresh.client()
            publish(client, 1, c, "payment_failed", at)
            loop = Consumer(store, env.bundle, RedisStreamSource(client, "c"), consumer="c", flush_s=3600)
            r = loop.step(100, 10)
            assert r.read == 0 and client.xlen(EVENTS_STREAM) == 1 and client.xlen(DEAD_STREAM) == 0
            assert "account_state" in loop.waiting and "customer_profile" in loop.waiting and "skewless materialize" in loop.waiting
            materialize(store, datetime.now(timezone.utc))
            r = loop.step(100, 10)
            assert (r.read, r.applied, r.dead) == (1, 1, 0) and loop.waiting is None, loop.waiting
            loop.settle()
            loop.close()
            state = store.get_online_features(features=["account_state:payment_failure_times_us"], entity_rows=[{"customer_id": c}]).to_dict()
            assert int(at.timestamp()) * 1_000_000 + at.microsecond in state["payment_failure_times_us"][0]
        finally:
            os.environ[REDIS_ENV] = saved
