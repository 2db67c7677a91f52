"""Parity: training, batch and online give the same features and the same prediction.

Each known way skew creeps in with Feast 0.67 is covered by a case below:
- TTL: Redis returns expired values as present; online must null them like offline does.
- Late-arriving rows: event-time windows miss them; `skewless materialize` re-reads a look-back.
- Time-relative features: relative to the entity row's time offline, to the request time online.
- Row order, dtypes, categories, missing values: must reach the model identically.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import copy_repo, feast_apply
from fastapi.testclient import TestClient

from batch.job import run_batch
from batch.retrieval import resolve, stream_features
from online.app import create_app
from feast_plugins.materialize import DEFAULT_LOOKBACK, materialize
from feast_plugins.redis_server import throwaway_redis
from online.settings import Settings
from training.dataset import historical_features
from synthetic.generate import ACTIVITY_FILE, ACTIVITY_SCHEMA, LABEL_SCHEMA, LABELS_FILE, PROFILE_SCHEMA, PROFILES_FILE
from skewless.store import REDIS_ENV, open_store

FLOAT_TOL = 1e-9
PROB_TOL = 1e-6


@pytest.fixture(scope="module")
def sample(live) -> list[int]:
    """Customers covering the hard cases, plus a random spread."""
    prof = pd.read_parquet(live.repo / "data" / PROFILES_FILE)
    act = pd.read_parquet(live.repo / "data" / ACTIVITY_FILE)
    now = pd.Timestamp(live.materialized_at)
    last = act.groupby("customer_id")["event_timestamp"].max()
    late = act[act["created"] - act["event_timestamp"] > timedelta(days=1)]["customer_id"]
    cases = {
        "expired activity": last[(last < now - timedelta(days=31))].index,
        "no activity at all": prof.loc[~prof["customer_id"].isin(act["customer_id"]), "customer_id"],
        "missing region": prof.loc[prof["region"].isna(), "customer_id"],
        "missing seats": prof.loc[prof["seats"].isna(), "customer_id"],
        "unseen category": prof.loc[prof["region"].eq("latam") | prof["plan"].eq("enterprise"), "customer_id"],
        "late-arriving row": late,
    }
    chosen: list[int] = []
    for name, ids in cases.items():
        ids = pd.Series(ids).drop_duplicates()
        assert len(ids), f"the generated data has no customer with {name}"
        chosen += ids.head(5).astype(int).tolist()
    chosen += prof["customer_id"].drop_duplicates().sample(40, random_state=3).astype(int).tolist()
    return list(dict.fromkeys(chosen))


def assert_same_features(bundle, left: pd.DataFrame, right: pd.DataFrame, what: str) -> None:
    """Exact for strings and integers, within 1e-9 for floats, null where null."""
    left, right = left.set_index("customer_id").sort_index(), right.set_index("customer_id").sort_index()
    assert list(left.index) == list(right.index)
    for spec in bundle.features:
        a, b = left[spec.name], right[spec.name]
        assert (a.isna() == b.isna()).all(), f"{what}: nulls differ in {spec.name}: {a[a.isna() != b.isna()].head(3).to_dict()} vs {b[a.isna() != b.isna()].head(3).to_dict()}"
        both = a.notna() & b.notna()
        if spec.is_categorical:
            assert (a[both].astype(str) == b[both].astype(str)).all(), f"{what}: {spec.name} differs"
        elif spec.dtype == "Int64":
            assert (a[both].astype("int64") == b[both].astype("int64")).all(), f"{what}: {spec.name} differs"
        else:
            diff = np.abs(a[both].astype(float) - b[both].astype(float))
            assert (diff <= FLOAT_TOL * np.maximum(1, np.abs(b[both].astype(float)))).all(), f"{what}: {spec.name} differs by {diff.max()}"


def test_training_batch_and_online_agree(live, sample, tmp_path):
    bundle = live.bundle
    settings = Settings(repo_path=live.repo, model_dir=live.model_dir, feature_log_dir=tmp_path / "log")
    with TestClient(create_app(settings)) as client:
        r = client.post("/predict/batch?include_features=true", json={"customer_ids": sample})
    assert r.status_code == 200
    served = [p for p in r.json()["predictions"] if p["status"] == "ok"]
    assert len(served) == len(sample)  # every sampled customer has a profile online
    as_of = datetime.fromisoformat(served[0]["features_as_of"])
    online = pd.DataFrame([{"customer_id": p["customer_id"], **p["features"]} for p in served])
    online_p = pd.Series({p["customer_id"]: p["churn_probability"] for p in served}).sort_index()

    # training path: Feast's point-in-time retrieval at the request time
    keys = pd.DataFrame({"customer_id": sample, "event_timestamp": as_of})
    offline = historical_features(live.store, bundle.feature_service, keys).drop(columns="event_timestamp")
    # batch path: the streamed retrieval and the job's written scores
    contract = resolve(live.store, bundle.feature_service)
    batch = pd.concat(stream_features(live.store, contract, pd.Series(sample), as_of, chunk_rows=16))
    run_batch(live.store, bundle, as_of, pd.Series(sample), tmp_path / "p.duckdb", tmp_path / "p", chunk_rows=16)
    import duckdb

    with duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True) as con:
        batch_p = con.execute("SELECT customer_id, churn_probability FROM churn_predictions").df().set_index("customer_id")["churn_probability"].sort_index()

    assert_same_features(bundle, online, offline, "online vs training")
    assert_same_features(bundle, batch, offline, "batch vs training")
    from skewless.score import score

    offline_p = pd.Series(score(bundle, offline).probability, index=offline["customer_id"]).sort_index()
    assert np.abs(online_p.to_numpy() - offline_p.to_numpy()).max() <= PROB_TOL
    assert np.abs(batch_p.to_numpy() - offline_p.to_numpy()).max() <= PROB_TOL
    # the hard cases really are in the sample, and hard: some nulls, some expired
    assert online["logins_7d"].isna().sum() >= 5 and online["region"].isna().any()


NOW = datetime.now(timezone.utc).replace(microsecond=0)


def activity(cid, event, created, logins):
    row = {c: 0 for c in ACTIVITY_SCHEMA.names}
    row.update(customer_id=cid, event_timestamp=event, created=created, logins_7d=logins, logins_30d=logins,
               active_minutes_7d=1.0, active_minutes_30d=1.0, spend_7d=1.0, spend_30d=1.0, last_active_at=event)
    return row


@pytest.fixture()
def late_repo(tmp_path, redis_endpoint):
    repo = copy_repo(tmp_path / "feature_repo")
    prof = [dict(customer_id=c, event_timestamp=NOW - timedelta(days=50), created=NOW - timedelta(days=50), plan="pro", region="na",
                 seats=2, monthly_fee=50.0, signup_date=NOW - timedelta(days=50), status="active") for c in (1, 2)]
    pq.write_table(pa.Table.from_pylist(prof, schema=PROFILE_SCHEMA), repo / "data" / PROFILES_FILE)
    pq.write_table(LABEL_SCHEMA.empty_table(), repo / "data" / LABELS_FILE)
    rows = [activity(1, NOW - timedelta(days=5), NOW - timedelta(days=5), 1), activity(2, NOW - timedelta(days=5), NOW - timedelta(days=5), 1)]
    write_activity(repo, rows)
    assert feast_apply(repo, redis_endpoint).returncode == 0
    return repo, rows


def write_activity(repo, rows):
    pq.write_table(pa.Table.from_pylist(rows, schema=ACTIVITY_SCHEMA), repo / "data" / ACTIVITY_FILE)


def online_logins(store, ids):
    return store.get_online_features(features=["customer_activity:logins_7d"], entity_rows=[{"customer_id": i} for i in ids]).to_dict()["logins_7d"]


@pytest.mark.parametrize(
    "engine, lookback, expect_caught",
    [("skewless", timedelta(0), True), ("local", DEFAULT_LOOKBACK, True), ("local", timedelta(0), False)],
)
def test_late_rows_reach_redis(late_repo, monkeypatch, engine, lookback, expect_caught):
    """Materialize to T1; a row for T1-1d arrives at T1+1d; the next run must still load it.

    The skewless engine (the yaml's) takes rows *created* in each window, so it needs no
    look-back; with Feast's stock engine (`batch_engine: local`) only the look-back saves it.
    """
    repo, rows = late_repo
    t1 = NOW - timedelta(days=3)
    with throwaway_redis() as endpoint:
        monkeypatch.setenv(REDIS_ENV, endpoint.feast)
        store = open_store(repo)
        if engine == "local":
            store.config.batch_engine_config = "local"
        materialize(store, t1, lookback)
        assert online_logins(store, [1, 2]) == [1, 1]
        # customer 1: a late row newer than Redis's value; customer 2: a late row older than it
        rows += [activity(1, t1 - timedelta(days=1), t1 + timedelta(days=1), 9), activity(2, NOW - timedelta(days=6), t1 + timedelta(days=1), 7)]
        write_activity(repo, rows)
        materialize(store, NOW, lookback)
        got = online_logins(store, [1, 2])
    assert got[0] == (9 if expect_caught else 1)
    assert got[1] == 1  # newer wins: an older late row never overwrites


def test_batch_and_online_refuse_a_bundle_after_the_contract_changes(live, tmp_path, redis_endpoint):
    """Change a feature view, re-apply: the batch job and the service both refuse to start."""
    import shutil

    from click.testing import CliRunner

    from skewless.bundle import BundleError
    from skewless.cli import main

    repo = copy_repo(tmp_path / "feature_repo")
    for f in (live.repo / "data").glob("*.parquet"):
        shutil.copy(f, repo / "data")
    defs = repo / "definitions.py"
    defs.write_text(defs.read_text().replace('Field(name="seats", dtype=Int64', 'Field(name="seats", dtype=Float64'))
    assert feast_apply(repo, redis_endpoint).returncode == 0
    r = CliRunner().invoke(main, ["score", "--repo", str(repo), "--model-dir", str(live.model_dir), "--as-of", "now",
                                  "--db", str(tmp_path / "p.duckdb"), "--parquet-dir", str(tmp_path / "p")])
    assert r.exit_code == 1 and "('seats', 'Int64')" in r.output and not (tmp_path / "p.duckdb").exists()
    with pytest.raises(BundleError, match="registry's differs"):
        with TestClient(create_app(Settings(repo_path=repo, model_dir=live.model_dir, feature_log_dir=tmp_path / "log"))):
            pass
