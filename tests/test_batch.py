"""Batch scoring: outputs, point-in-time parity with training (exactly), atomic re-runs and
crashes, freshness, bad input.

The parity tests are the guarantee behind batch/retrieval.py: chunked `get_historical_features`
through the offline store (on-demand views applied by feast_plugins/on_demand.py) must give, row for row and value for
value, what training's `get_historical_features(...).to_df()` gives at the same time, including
every case where the two could drift apart; and the active-customer scan must list exactly the
customers Feast's own retrieval says are active.
"""

from __future__ import annotations

import runpy
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import copy_repo, feast_apply

from batch import job, outputs
from feast_plugins import on_demand
from batch.outputs import ARROW_SCHEMA, TABLE
from batch.retrieval import active_customers, resolve, stream_features
from skewless.bundle import load_bundle
from skewless.cli import main
from training.dataset import historical_features
from synthetic.generate import (
    ACTIVITY_FILE,
    ACTIVITY_SCHEMA,
    LABEL_SCHEMA,
    LABELS_FILE,
    PROFILE_SCHEMA,
    PROFILES_FILE,
)
from skewless.score import score
from skewless.store import open_store

AS_OF = datetime(2026, 10, 20, 12, tzinfo=timezone.utc)  # inside the 1k data, which ends 2026-11-01


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture()
def out(tmp_path):
    return {"db": tmp_path / "out" / "predictions.duckdb", "pq": tmp_path / "out" / "predictions"}


def run_cli(small_repo, small_bundle, out, *args, repo=None):
    _, model_dir = small_bundle
    return CliRunner().invoke(
        main,
        ["score", "--repo", str(repo or small_repo), "--model-dir", str(model_dir), "--db", str(out["db"]), "--parquet-dir", str(out["pq"]), *args],
    )


def db_rows(db) -> pd.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"SELECT * FROM {TABLE} ORDER BY model_version, as_of, customer_id").df()


def files(root: Path) -> dict[str, bytes]:
    """Every file under a directory (hidden ones too), by relative path."""
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def assert_same_features(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Exactly equal: same rows and order, same values (floats bit for bit), nulls where nulls."""
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    assert a["customer_id"].tolist() == b["customer_id"].tolist()
    for col in a.columns:
        x, y = a[col], b[col]
        assert (x.isna().to_numpy() == y.isna().to_numpy()).all(), f"{col}: nulls differ"
        both = (x.notna() & y.notna()).to_numpy()
        xs, ys = x[both].tolist(), y[both].tolist()
        assert xs == ys, f"{col}: values differ, e.g. {[(p, q) for p, q in zip(xs, ys) if p != q][:3]}"
        assert [type(v) for v in xs] == [type(v) for v in ys], f"{col}: types differ"


# --- outputs -----------------------------------------------------------------------------


def test_output_schema_and_partition_layout(small_repo, small_bundle, out):
    r = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat())
    assert r.exit_code == 0, r.output
    with duckdb.connect(str(out["db"]), read_only=True) as con:
        types = con.execute(f"SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{TABLE}' ORDER BY ordinal_position").fetchall()
    assert types == [
        ("customer_id", "BIGINT"), ("churn_probability", "DOUBLE"), ("churn_prediction", "INTEGER"), ("risk_segment", "VARCHAR"),
        ("model_name", "VARCHAR"), ("model_version", "VARCHAR"), ("as_of", "TIMESTAMP"), ("scored_at", "TIMESTAMP"), ("run_id", "VARCHAR"),
        ("run_kind", "VARCHAR"),
    ]
    written = sorted(files(out["pq"]))
    version = small_bundle[0].bundle.version
    assert written == [f"{TABLE}/as_of_date=2026-10-20/churn-{version}-20261020T120000000000.parquet"]  # no staging left behind
    rows = db_rows(out["db"])
    assert set(rows["as_of"]) == {pd.Timestamp("2026-10-20 12:00:00")} and rows["run_id"].nunique() == 1 and rows["scored_at"].nunique() == 1
    assert set(rows["risk_segment"]) <= {"Low", "Medium", "High"} and set(rows["churn_prediction"]) <= {0, 1}
    # the Parquet is the same rows, readable as a hive-partitioned dataset
    dataset = ds.dataset(out["pq"] / TABLE, partitioning="hive")
    table = dataset.to_table()
    assert table.schema.remove(table.schema.get_field_index("as_of_date")) == ARROW_SCHEMA
    parquet = table.to_pandas().drop(columns="as_of_date").sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(parquet, rows, check_dtype=False)
    assert "customers with at least one missing input" in r.output
    # the run ends with its highest-risk customers, read back from the table (what `make demo` shows)
    top = rows.sort_values(["churn_probability", "customer_id"], ascending=[False, True]).head(10)
    assert "top 10 customers by churn probability (table churn_predictions" in r.output
    assert [int(line.split()[0]) for line in r.output.strip().splitlines()[-10:]] == top["customer_id"].tolist()
    again = CliRunner().invoke(main, ["score", "top", "-n", "3", "--db", str(out["db"])])
    assert again.exit_code == 0 and [int(line.split()[0]) for line in again.output.strip().splitlines()[-3:]] == top["customer_id"].tolist()[:3]


# --- parity with training ----------------------------------------------------------------


def test_batch_score_is_the_training_path_score(small_repo, small_store, small_bundle, out):
    """At T, batch retrieval gives exactly training's point-in-time features, and the written
    score is the shared scoring function's score of the training path's features."""
    bundle = small_bundle[0].bundle
    contract = resolve(small_store, bundle.feature_service)
    ids = active_customers(small_store, AS_OF)
    assert 300 < len(ids) < 1000 and ids.is_monotonic_increasing
    keys = pd.DataFrame({"customer_id": ids.to_numpy(), "event_timestamp": AS_OF})
    training = historical_features(small_store, bundle.feature_service, keys)[["customer_id"] + contract.features]
    assert_same_features(pd.concat(stream_features(small_store, contract, ids, AS_OF, chunk_rows=128)), training)
    pd.testing.assert_frame_equal(pd.concat(stream_features(small_store, contract, ids, AS_OF)).reset_index(drop=True), training, check_exact=True)
    assert training["logins_7d"].isna().any() and training["region"].isna().any() and training["seats"].isna().any()

    assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat(), "--chunk-rows", "128").exit_code == 0
    written = db_rows(out["db"])
    assert written["customer_id"].tolist() == ids.tolist()
    expected = score(bundle, training)
    assert np.array_equal(written["churn_probability"].to_numpy(), expected.probability)
    assert written["risk_segment"].tolist() == expected.risk_segment


T = datetime(2026, 10, 20, 12, tzinfo=timezone.utc)
D = timedelta(days=1)


def profile(cid, event, plan="pro", region="na", seats=5, fee=125.0, signup=None, status="active", created=None):
    return {"customer_id": cid, "event_timestamp": event, "created": created or event, "plan": plan, "region": region, "seats": seats,
            "monthly_fee": fee, "signup_date": signup or T - 400 * D + timedelta(microseconds=123456), "status": status}


def activity(cid, event, logins, created=None, minutes=30.0, last_active=None):
    row = dict.fromkeys(ACTIVITY_SCHEMA.names, 1)
    row.update(customer_id=cid, event_timestamp=event, created=created or event, logins_7d=logins, logins_30d=logins * 3,
               active_minutes_7d=minutes, active_minutes_30d=minutes, spend_7d=2.5, spend_30d=7.5,
               last_active_at=event - timedelta(hours=3, microseconds=777) if last_active is None else last_active)
    return row


# customer -> why it is here
EDGE_CASES = {
    1: "plain: the latest row of each view; a row after T is ignored",
    2: "activity only older than the 30-day TTL: expired, nulls",
    3: "activity exactly at T - TTL: still valid",
    4: "late-arriving row (event before T, created after T): not known yet, the earlier row counts",
    5: "two rows with the same event time: the later `created` wins",
    6: "same event time, the later `created` arrived after T: the earlier one counts",
    7: "missing values: region, seats, active minutes, last_active_at",
    8: "unseen categories (enterprise, latam) and zero seats (ratios null)",
    9: "no activity at all",
    10: "profile only after T: unknown at T (not active, all nulls)",
    11: "no row anywhere",
    12: "latest snapshot cancelled: not active, but scored with its features when listed",
    13: "newer snapshot arrived after T: the older snapshot counts",
    14: "signed up after T: not active",
    15: "rows exactly at T (event and created): known",
}


@pytest.fixture(scope="module")
def edge_repo(tmp_path_factory, redis_endpoint):
    """A Feast repo with hand-written rows, one customer per case in EDGE_CASES, applied."""
    repo = copy_repo(tmp_path_factory.mktemp("edge") / "feature_repo")
    profiles = [profile(c, T - 100 * D) for c in (1, 2, 3, 4, 5, 6, 9)] + [
        profile(7, T - 50 * D, plan="basic", region=None, seats=None, fee=12.0),
        profile(8, T - 20 * D, plan="enterprise", region="latam", seats=0, fee=80.0),
        profile(10, T + D),
        profile(12, T - 100 * D), profile(12, T - 10 * D, plan="business", status="cancelled"),
        profile(13, T - 100 * D, plan="basic"), profile(13, T - 5 * D, plan="business", created=T + D),
        profile(14, T - D, signup=T + 2 * D),
        profile(15, T, signup=T - 30 * D),
    ]
    acts = [
        activity(1, T - 2 * D, 5), activity(1, T + D, 111),
        activity(2, T - 31 * D, 9),
        activity(3, T - 30 * D, 3),
        activity(4, T - 5 * D, 4), activity(4, T - D, 44, created=T + timedelta(hours=1)),
        activity(5, T - 3 * D, 5), activity(5, T - 3 * D, 55, created=T - 2 * D),
        activity(6, T - 3 * D, 6), activity(6, T - 3 * D, 66, created=T + D),
        activity(7, T - D, 7, minutes=None, last_active=None) | {"last_active_at": None},
        activity(8, T - D, 8),
        activity(10, T - D, 10), activity(12, T - D, 12), activity(13, T - D, 13), activity(14, T - D, 14),
        activity(15, T, 15),
    ]
    pq.write_table(pa.Table.from_pylist(profiles, schema=PROFILE_SCHEMA), repo / "data" / PROFILES_FILE)
    pq.write_table(pa.Table.from_pylist(acts, schema=ACTIVITY_SCHEMA), repo / "data" / ACTIVITY_FILE)
    pq.write_table(LABEL_SCHEMA.empty_table(), repo / "data" / LABELS_FILE)
    result = feast_apply(repo, redis_endpoint)
    assert result.returncode == 0, result.stderr
    return repo


# Feast's frames of a chunk where a column is all null have object dtype; concat warns about it
@pytest.mark.filterwarnings("ignore:The behavior of DataFrame concatenation with empty or all-NA:FutureWarning")
def test_batch_retrieval_equals_training_on_every_edge_case(edge_repo, small_bundle, tmp_path, monkeypatch):
    store = open_store(edge_repo)
    bundle = load_bundle(small_bundle[0].bundle.version, small_bundle[1], store=store)
    contract = resolve(store, bundle.feature_service)
    ids = pd.Series(sorted(EDGE_CASES))

    assert active_customers(store, T).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 15]
    # ... which is what Feast's own point-in-time retrieval of the profile says
    status = store.get_historical_features(
        entity_df=pd.DataFrame({"customer_id": ids, "event_timestamp": T}),
        features=["customer_profile:status", "customer_profile:signup_date"], filter_by_created_timestamp=True,
    ).to_df()
    feast_active = status[(status["status"] == "active") & (status["signup_date"] < T)]["customer_id"]
    assert sorted(feast_active.tolist()) == active_customers(store, T).tolist()

    keys = pd.DataFrame({"customer_id": ids, "event_timestamp": T})
    training = historical_features(store, bundle.feature_service, keys)[["customer_id"] + contract.features]
    for chunk in (3, 100):  # chunks of 3 include one where every derived feature is null
        assert_same_features(pd.concat(stream_features(store, contract, ids, T, chunk_rows=chunk)), training)

    # the fast input conversion for the on-demand view gives what Feast's own transform_arrow gives
    with monkeypatch.context() as m:
        m.setattr(on_demand, "_fast_path", lambda odfv: False)
        assert_same_features(pd.concat(stream_features(store, contract, ids, T, chunk_rows=100)), training)

    # the cases really are what they say (so agreement is not both paths wrong the same way)
    f = training.set_index("customer_id")
    assert f.loc[1, "logins_7d"] == 5 and f.loc[3, "logins_7d"] == 3 and f.loc[4, "logins_7d"] == 4
    assert f.loc[5, "logins_7d"] == 55 and f.loc[6, "logins_7d"] == 6 and f.loc[15, "logins_7d"] == 15
    assert f.loc[[2, 9, 11], "logins_7d"].isna().all() and f.loc[[2, 9, 11], "days_since_last_active"].isna().all()
    assert f.loc[10, ["plan", "region", "seats", "monthly_fee", "tenure_days"]].isna().all() and f.loc[10, "logins_7d"] == 10
    assert f.loc[11].isna().all()
    assert f.loc[7, ["region", "seats", "active_minutes_7d", "minutes_per_seat_7d", "fee_per_seat", "days_since_last_active"]].isna().all()
    assert f.loc[8, "plan"] == "enterprise" and pd.isna(f.loc[8, "fee_per_seat"])
    assert f.loc[12, "plan"] == "business" and f.loc[13, "plan"] == "basic"
    assert f.loc[1, "tenure_days"] == 400.0  # whole seconds: the signup's microseconds do not count

    # scores: the run writes exactly the shared function's score of training's features, for every
    # customer with features at T; the one with no row anywhere is not found, as online (404)
    summary = job.run_batch(store, bundle, T, ids, tmp_path / "p.duckdb", tmp_path / "p", chunk_rows=4)
    assert summary.not_found == [11] and summary.customers == len(EDGE_CASES) - 1
    written = db_rows(tmp_path / "p.duckdb")
    known = training[training["customer_id"] != 11]
    assert written["customer_id"].tolist() == known["customer_id"].tolist()
    assert np.array_equal(written["churn_probability"].to_numpy(), score(bundle, known).probability)


# --- atomic runs -------------------------------------------------------------------------


def test_rerun_replaces_the_run_without_duplicates(small_repo, small_bundle, out):
    assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat()).exit_code == 0
    first = db_rows(out["db"])
    assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat(), "--chunk-rows", "100").exit_code == 0
    again = db_rows(out["db"])
    assert len(again) == len(first) and not again["customer_id"].duplicated().any()
    assert again["run_id"].nunique() == 1 and again["run_id"][0] != first["run_id"][0]
    assert np.array_equal(again["churn_probability"], first["churn_probability"])
    assert len(files(out["pq"])) == 1
    # another as-of is another run, next to it
    assert run_cli(small_repo, small_bundle, out, "--as-of", (AS_OF - timedelta(days=2)).isoformat()).exit_code == 0
    assert db_rows(out["db"])["run_id"].nunique() == 2 and len(files(out["pq"])) == 2


def test_crash_between_chunks_keeps_the_previous_run(small_repo, small_bundle, out, monkeypatch):
    assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat()).exit_code == 0
    before, files_before = db_rows(out["db"]), files(out["pq"])
    calls = {"n": 0}
    real_score = job.score

    def crash_on_third_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed between chunks")
        return real_score(*args, **kwargs)

    monkeypatch.setattr(job, "score", crash_on_third_chunk)
    r = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat(), "--chunk-rows", "100")
    assert r.exit_code == 1 and calls["n"] == 3 and "killed between chunks" in r.output
    pd.testing.assert_frame_equal(db_rows(out["db"]), before)
    assert files(out["pq"]) == files_before  # and no staging directory left
    # a crashed run for a new as-of date leaves no partition behind
    calls["n"] = 0
    r = run_cli(small_repo, small_bundle, out, "--as-of", (AS_OF - timedelta(days=3)).isoformat(), "--chunk-rows", "100")
    assert r.exit_code == 1
    assert files(out["pq"]) == files_before and sorted(p.name for p in (out["pq"] / TABLE).iterdir()) == ["as_of_date=2026-10-20"]


def test_crash_during_the_swap_keeps_the_previous_run(small_repo, small_bundle, out, monkeypatch):
    """The Parquet rename fails inside the DuckDB transaction: the transaction rolls back."""
    assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat()).exit_code == 0
    before, files_before = db_rows(out["db"]), files(out["pq"])

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(outputs.os, "replace", failing_replace)
    r = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat())
    assert r.exit_code == 1 and "No space left" in r.output and len(r.output.strip().splitlines()) == 1
    pd.testing.assert_frame_equal(db_rows(out["db"]), before)
    assert files(out["pq"]) == files_before


# --- freshness ---------------------------------------------------------------------------


def test_status_exit_codes(small_repo, small_bundle, out):
    runner = CliRunner()
    absent = runner.invoke(main, ["score", "status", "--db", str(out["db"])])
    assert absent.exit_code == 1 and "no batch runs" in absent.output
    assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat()).exit_code == 0
    fresh = runner.invoke(main, ["score", "status", "--db", str(out["db"]), "--max-age", "1h"])
    assert fresh.exit_code == 0, fresh.output
    assert "churn/" in fresh.output and "as-of 2026-10-20 12:00:00" in fresh.output and "rows" in fresh.output
    with duckdb.connect(str(out["db"])) as con:
        con.execute(f"UPDATE {TABLE} SET scored_at = scored_at - INTERVAL 2 DAY")
        con.execute("UPDATE churn_runs SET scored_at = scored_at - INTERVAL 2 DAY")
    stale = runner.invoke(main, ["score", "status", "--db", str(out["db"]), "--max-age", "26h"])
    assert stale.exit_code == 1 and "stale predictions for churn" in stale.output
    assert runner.invoke(main, ["score", "status", "--db", str(out["db"]), "--max-age", "3d"]).exit_code == 0
    bad = runner.invoke(main, ["score", "status", "--db", str(out["db"]), "--max-age", "soon"])
    assert bad.exit_code == 1 and "not a duration" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_status_and_top_follow_the_full_run_not_an_ad_hoc_one(small_repo, small_bundle, out, tmp_path):
    runner = CliRunner()
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n7\n")
    adhoc = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat(), "--customers", str(ids))
    assert adhoc.exit_code == 0 and "an ad-hoc run" in adhoc.output
    only_adhoc = runner.invoke(main, ["score", "status", "--db", str(out["db"])])
    assert only_adhoc.exit_code == 1 and "only ad-hoc runs" in only_adhoc.output
    assert run_cli(small_repo, small_bundle, out, "--as-of", (AS_OF - timedelta(days=1)).isoformat()).exit_code == 0
    assert run_cli(small_repo, small_bundle, out, "--as-of", (AS_OF + timedelta(hours=1)).isoformat(), "--customers", str(ids)).exit_code == 0
    status = runner.invoke(main, ["score", "status", "--db", str(out["db"])])
    assert status.exit_code == 0, status.output
    full_line, adhoc_line = status.output.strip().splitlines()[:2]
    assert "full run as-of 2026-10-19 12:00:00" in full_line and "ad-hoc run (not counted as fresh)" in adhoc_line and "2 rows" in adhoc_line
    top = runner.invoke(main, ["score", "top", "-n", "5", "--db", str(out["db"])])
    assert top.exit_code == 0 and "as-of 2026-10-19 12:00:00" in top.output and len(top.output.strip().splitlines()) == 7
    latest_adhoc = runner.invoke(main, ["score", "top", "--ad-hoc", "--db", str(out["db"])])
    assert latest_adhoc.exit_code == 0 and "as-of 2026-10-20 13:00:00" in latest_adhoc.output and len(latest_adhoc.output.strip().splitlines()) == 4


def test_python_dash_m_batch(tmp_path, monkeypatch, capsys):
    """`python -m batch ...` is `skewless score ...` (run in process: a subprocess would spend
    seconds importing Feast to say the same)."""
    monkeypatch.setattr(sys, "argv", ["python -m batch", "status", "--db", str(tmp_path / "none.duckdb")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("batch", run_name="__main__", alter_sys=True)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"Error: no batch runs in {tmp_path / 'none.duckdb'}: no full run to be fresh (run `skewless score --as-of now`)"]


# --- bad input ---------------------------------------------------------------------------


def test_ids_file_duplicates_are_scored_once(small_repo, small_bundle, out, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("customer_id\n5\n7\n5\n\n# a comment\n9  # trailing comment\n7\n")
    r = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat(), "--customers", str(ids))
    assert r.exit_code == 0, r.output
    assert "2 duplicate ID(s)" in r.output and "scored 3 customers" in r.output
    assert db_rows(out["db"])["customer_id"].tolist() == [5, 7, 9]


def test_unknown_customers_are_not_found_and_not_scored(small_repo, small_bundle, out, tmp_path):
    """The service answers 404 for a customer with no features; batch reports it the same way."""
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n999999999\n7\n")
    r = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat(), "--customers", str(ids))
    assert r.exit_code == 0, r.output
    assert "scored 2 customers" in r.output and "not found: 1 customers have no features" in r.output and "999999999" in r.output
    assert db_rows(out["db"])["customer_id"].tolist() == [5, 7]
    ids.write_text("999999999\n888888888\n")
    r = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat(), "--customers", str(ids))
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "none of the 2 customers has features" in r.output and "999999999" in r.output
    assert db_rows(out["db"])["customer_id"].tolist() == [5, 7]  # the failed run changed nothing


def _bad(tmp_path, small_bundle) -> dict[str, tuple[list[str], str]]:
    junk = tmp_path / "junk.txt"
    junk.write_text("5\nseven\n-3\n9\n12345678901234567890\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return {
        "unknown model": (["--model", "nope"], "no model version 'nope'"),
        "future": (["--as-of", "2099-01-01T00:00:00Z"], "is in the future"),
        "before data": (["--as-of", "2001-01-01T00:00:00Z"], "is before the data of"),
        "before a view's data": (["--as-of", "2025-01-01T00:00:00Z"], "is before the data of customer_activity"),
        "not a time": (["--as-of", "yesterday-ish"], "not a time: 'yesterday-ish'"),
        "junk ids": (["--customers", str(junk)], "3 line(s) are not customer IDs (first: line 2: 'seven'); nothing was scored"),
        "empty ids": (["--customers", str(empty)], "no customer IDs in the file"),
        "missing ids": (["--customers", str(tmp_path / "nope.txt")], "no such file"),
        "unwritable db": (["--db", str(blocker / "p.duckdb")], str(blocker)),
        "unwritable parquet": (["--parquet-dir", str(blocker / "p")], str(blocker)),
        "both lists": (["--customers", str(junk), "--all-active"], "not both"),
        "chunk size": (["--chunk-rows", "0"], "--chunk-rows must be a positive number"),
    }


@pytest.fixture(scope="module")
def baseline(small_repo, small_bundle, tmp_path_factory) -> Path:
    """Outputs of one good run, copied by each bad-input test so it can check nothing changed."""
    root = tmp_path_factory.mktemp("baseline")
    out = {"db": root / "predictions.duckdb", "pq": root / "predictions"}
    assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat()).exit_code == 0
    return root


@pytest.mark.parametrize(
    "case", ["unknown model", "future", "before data", "before a view's data", "not a time", "junk ids", "empty ids", "missing ids",
             "unwritable db", "unwritable parquet", "both lists", "chunk size"],
)
def test_bad_input_is_one_line_and_damages_nothing(small_repo, small_bundle, baseline, tmp_path, case):
    shutil.copytree(baseline, tmp_path / "out")
    out = {"db": tmp_path / "out" / "predictions.duckdb", "pq": tmp_path / "out" / "predictions"}
    before, files_before = db_rows(out["db"]), files(out["pq"])
    args, message = _bad(tmp_path, small_bundle)[case]
    if "--as-of" not in args:
        args = ["--as-of", AS_OF.isoformat(), *args]
    # later flags win in click, so a bad --db/--parquet-dir replaces the good one
    r = run_cli(small_repo, small_bundle, out, *args)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert message in r.output, r.output
    pd.testing.assert_frame_equal(db_rows(out["db"]), before)
    assert files(out["pq"]) == files_before
