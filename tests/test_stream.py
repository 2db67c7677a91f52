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

from feast_plugins.materialize import materialize
from feast_plugins.redis_server import throwaway_redis
from online.app import create_app
from online.settings import Settings
from stream import consumer as consumer_module
from stream.consumer import Consumer
from stream.source import DEAD_STREAM, EVENTS_STREAM, SCORES_STREAM, RedisStreamSource
from training.dataset import historical_features
from synthetic.generate import PROFILES_FILE
from skewless.score import score
from skewless.store import REDIS_ENV, open_store

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
    for key in (EVENTS_STREAM, SCORES_STREAM, DEAD_STREAM, f"{EVENTS_STREAM}:acked:skewless-stream",
                *client.scan_iter(match=consumer_module.SEEN_PREFIX + b"*")):
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


def one_event_each(env, streams, seed: int, first_id: int) -> dict[int, tuple[int, int]]:
    """One payment failure for each of 6 customers: customer -> (event ID, event time in us).

    One event per customer, so nothing later in the run re-scores a customer a crash skipped."""
    now = datetime.now(timezone.utc)
    sent = {}
    for i, cid in enumerate(customers(env, 6, seed=seed)):
        at = now - timedelta(seconds=60 - i)
        publish(streams, first_id + i, cid, "payment_failed", at)
        sent[cid] = (first_id + i, int(at.timestamp()) * 1_000_000 + at.microsecond)
    return sent


def assert_every_effect_once(env, streams, sent: dict[int, tuple[int, int]]) -> None:
    """Each event's whole effect, once: its time once in the state online, the same state offline,
    a stored score and a newest published score under its ID, both what /predict's read and the
    one scoring function give at that score's instant; nothing dead-lettered, pending or left staged."""
    from online.features import FeatureLookup

    assert streams.xlen(DEAD_STREAM) == 0  # a redelivery is no duplicate
    assert streams.xpending(EVENTS_STREAM, "skewless-stream")["pending"] == 0
    ids = list(sent)
    online = state_online(env, ids)
    offline = state_offline(env)
    published = output(streams)
    stored = env.store.get_online_features(features=["churn_scores:churn_probability", "churn_scores:run_id"],
                                           entity_rows=[{"customer_id": c} for c in ids]).to_dict()
    lookup = FeatureLookup(env.store, env.bundle.feature_service)
    for j, (cid, (event_id, at_us)) in enumerate(sent.items()):
        held = online["payment_failure_times_us"][j]
        assert held.count(at_us) == 1, (cid, held)  # applied, once
        assert list(offline.loc[cid]["payment_failure_times_us"]) == held, cid  # offline holds what online holds
        assert cid in published and int(published[cid]["event_id"]) == event_id, (cid, published.get(cid))  # no stale score
        assert stored["run_id"][j] == f"event:{event_id}", (cid, stored["run_id"][j])
        p = float(published[cid]["churn_probability"])
        assert p == stored["churn_probability"][j], cid  # stored and published are the same score
        got = lookup.lookup([cid], datetime.fromisoformat(published[cid]["as_of"]))  # /predict's read at that instant
        assert got.found[0] and got.values["payment_failures_24h"][0] >= 1, cid
        assert abs(p - score(env.bundle, got.values).probability[0]) <= PROB_TOL, cid
    for what in ("account_state", "churn_scores"):
        staging = env.repo / "data" / (f".{what}.staging" if what == "account_state" else ".predictions.staging")
        assert not list(staging.glob("*/*.tmp")), what


@pytest.mark.parametrize("where", consumer_module.BOUNDARIES)
def test_a_consumer_killed_at_any_boundary_of_a_batch_leaves_every_effect_once(env, streams, monkeypatch, where):
    sent = one_event_each(env, streams, seed=5, first_id=1000)

    def die_at(name):
        if name == where:
            raise Crash(name)

    c = Consumer(env.store, env.bundle, RedisStreamSource(env.redis.client(), "crashing"), consumer="crashing", flush_s=3600)
    with monkeypatch.context() as m:
        m.setattr(consumer_module, "boundary", die_at)
        with pytest.raises(Crash):
            c.step(100, 10)
    restarted = Consumer(env.store, env.bundle, RedisStreamSource(env.redis.client(), "crashing"), consumer="crashing", flush_s=3600)
    r = restarted.step(deliveries=restarted.source.pending_of_mine(100))
    drain(restarted)
    assert r.read == 6 and r.scored == 6, r  # every redelivered customer scored again, applied or not
    assert (r.applied, r.unchanged) == ((6, 0) if where == "state-staged" else (0, 6)), r
    assert_every_effect_once(env, streams, sent)


@pytest.mark.parametrize("where", consumer_module.BOUNDARIES)
def test_sigkill_of_the_real_consumer_at_any_boundary_leaves_every_effect_once(env, streams, where):
    skewless = Path(sys.executable).with_name("skewless")
    run_env = dict(os.environ, REDIS_URL=env.redis.url, SKEWLESS_REDIS=env.redis.feast, SKEWLESS_MODEL_DIR=str(env.models))
    cmd = [str(skewless), "stream", "run", "--repo", str(env.repo), "--metrics-port", "0", "--consumer", "killed"]
    sent = one_event_each(env, streams, seed=6, first_id=3000)
    killed = subprocess.run([*cmd, "--until-idle", "5"], env=dict(run_env, SKEWLESS_STREAM_KILL_AT=where), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    again = subprocess.run([*cmd, "--until-idle", "1"], env=run_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    applied = 6 if where == "state-staged" else 0
    assert f"6 events read, {applied} applied, {6 - applied} unchanged, 0 dead-lettered, 6 scores published" in again.stdout, again.stdout
    assert_every_effect_once(env, streams, sent)


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


def test_a_killed_runs_staging_leftovers_are_cleaned_and_not_flushed_twice(env, streams, monkeypatch):
    sent = one_event_each(env, streams, seed=8, first_id=7000)
    c = Consumer(env.store, env.bundle, RedisStreamSource(env.redis.client(), "tidy"), consumer="tidy", flush_s=3600)
    c.step(100, 10)
    staging = env.repo / "data" / ".account_state.staging" / "tidy"
    (staging / "00000000000000000001-deadbeef.tmp").write_bytes(b"half a parquet file")  # killed while staging
    with monkeypatch.context() as m:  # killed while flushing: the part file is in place, its staged files not yet removed
        m.setattr(Path, "unlink", lambda self, missing_ok=False: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            c.flush()
    assert len(list(staging.glob("*.parquet"))) == 1
    before = len(pq.read_table(env.repo / "data" / "account_state"))
    Consumer(env.store, env.bundle, RedisStreamSource(env.redis.client(), "tidy"), consumer="tidy", flush_s=3600).close()
    assert list(staging.iterdir()) == []  # the .tmp removed, the flushed file not flushed again
    assert len(pq.read_table(env.repo / "data" / "account_state")) == before
    assert_every_effect_once(env, streams, sent)


def test_an_event_id_sent_again_with_another_payload_is_dead_lettered_not_applied(env, streams):
    (c,) = customers(env, 1, seed=44)
    now = datetime.now(timezone.utc)
    first, second, third = (now - timedelta(seconds=s) for s in (30, 20, 10))
    us = lambda t: int(t.timestamp()) * 1_000_000 + t.microsecond  # noqa: E731
    publish(streams, 4242, c, "payment_failed", first)
    publish(streams, 4242, c, "payment_failed", second)  # same ID, another time, same batch
    loop = consume(env)
    publish(streams, 4242, c, "payment_failed", third)  # and in a later batch, recognised from Redis
    drain(loop)
    reasons = [f[b"reason"].decode() for _, f in streams.xrange(DEAD_STREAM)]
    assert len(reasons) == 2 and all("event_id 4242 was applied before" in r for r in reasons), reasons
    assert str(us(second)) in reasons[0] and str(us(third)) in reasons[1], reasons
    held = state_online(env, [c])["payment_failure_times_us"][0]
    assert us(first) in held and us(second) not in held and us(third) not in held


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

    from skewless.cli import main

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


def test_failed_payments_pushed_by_the_stream_are_among_the_top_reasons(env, streams):
    """Three failed payments in the last hours, pushed as events: /predict?explain=true names the
    payment features among the customer's top three reasons, raising the risk."""
    (cid,) = customers(env, 1, seed=77)
    now = datetime.now(timezone.utc)
    for i in range(3):
        publish(streams, 900 + i, cid, "payment_failed", now - timedelta(hours=3 - i), 49.0)
    consume(env)
    settings = Settings(repo_path=env.repo, model_dir=env.models, feature_log=False)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/predict?explain=true&explain_top=3&include_features=true", json={"customer_id": cid}).json()
    assert answer["features"]["payment_failures_24h"] == 3
    reasons = {r["feature"]: r for r in answer["explanation"]["reasons"]}
    payment = {"payment_failures_24h", "hours_since_last_payment_failure"} & set(reasons)
    assert payment and all(reasons[f]["direction"] == "raises" for f in payment), answer["explanation"]
