"""Batch scoring: outputs, point-in-time parity with training, atomic re-runs, freshness, bad input."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import batch.job as job
from batch.outputs import TABLE
from batch.retrieval import active_customers, resolve, stream_features
from training.cli import main
from training.dataset import historical_features
from training.score import score

AS_OF = datetime(2026, 10, 20, 12, tzinfo=timezone.utc)


@pytest.fixture()
def out(tmp_path):
    return {"db": tmp_path / "predictions.duckdb", "pq": tmp_path / "predictions"}


def run_cli(small_repo, small_bundle, out, *args):
    _, model_dir = small_bundle
    return CliRunner().invoke(
        main,
        ["score", "--repo", str(small_repo), "--model-dir", str(model_dir), "--db", str(out["db"]), "--parquet-dir", str(out["pq"]), *args],
    )


def rows(db):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"SELECT * FROM {TABLE} ORDER BY customer_id").df()


def test_output_schema_and_partitions(small_repo, small_bundle, out):
    r = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat())
    assert r.exit_code == 0, r.output
    with duckdb.connect(str(out["db"]), read_only=True) as con:
        types = dict(con.execute(f"SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{TABLE}' ORDER BY ordinal_position").fetchall())
    assert types == {
        "customer_id": "BIGINT", "churn_probability": "DOUBLE", "churn_prediction": "INTEGER", "risk_segment": "VARCHAR",
        "model_name": "VARCHAR", "model_version": "VARCHAR", "as_of": "TIMESTAMP", "scored_at": "TIMESTAMP", "run_id": "VARCHAR",
    }
    files = list((out["pq"] / TABLE).rglob("*"))
    parquet = [f for f in files if f.is_file()]
    assert [f.parent.name for f in parquet] == ["as_of_date=2026-10-20"]
    assert len(pd.read_parquet(parquet[0])) == len(rows(out["db"]))
    assert "top high-risk customers" in r.output


def test_batch_score_is_the_training_path_score(small_store, small_bundle):
    """Both engines give exactly Feast's point-in-time features, and the shared function's score."""
    bundle = small_bundle[0].bundle
    contract = resolve(small_store, bundle.feature_service)
    ids = active_customers(small_store, AS_OF)
    assert 300 < len(ids) < 1000
    fast = pd.concat(stream_features(small_store, contract, ids, AS_OF, chunk_rows=128)).reset_index(drop=True)
    feast = pd.concat(stream_features(small_store, contract, ids, AS_OF, chunk_rows=400, engine="feast")).reset_index(drop=True)
    keys = pd.DataFrame({"customer_id": ids.to_numpy(), "event_timestamp": AS_OF})
    offline = historical_features(small_store, bundle.feature_service, keys)[["customer_id"] + contract.features]
    for other in (feast, offline):
        pd.testing.assert_frame_equal(fast, other.sort_values("customer_id", ignore_index=True), check_dtype=False, rtol=1e-12)
    # the interesting cases are in the sample: expired activity, missing values
    assert fast["logins_7d"].isna().any() and fast["region"].isna().any() and fast["seats"].isna().any()
    assert np.array_equal(score(bundle, fast).probability, score(bundle, offline).probability)


def test_rerun_replaces_the_run_without_duplicates(small_repo, small_bundle, out):
    for _ in range(2):
        assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat()).exit_code == 0
    df = rows(out["db"])
    assert not df["customer_id"].duplicated().any()
    assert df["run_id"].nunique() == 1
    assert len([f for f in (out["pq"] / TABLE).rglob("*") if f.is_file()]) == 1


def test_crash_between_chunks_keeps_the_previous_run(small_repo, small_bundle, out, monkeypatch):
    assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat()).exit_code == 0
    before = rows(out["db"])
    files_before = {f: f.read_bytes() for f in (out["pq"] / TABLE).rglob("*") if f.is_file()}
    calls = {"n": 0}
    real_score = job.score

    def crash_on_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed between chunks")
        return real_score(*args, **kwargs)

    monkeypatch.setattr(job, "score", crash_on_second_chunk)
    r = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat(), "--chunk-rows", "100")
    assert r.exit_code != 0 and calls["n"] == 2
    pd.testing.assert_frame_equal(rows(out["db"]), before)
    assert {f: f.read_bytes() for f in (out["pq"] / TABLE).rglob("*") if f.is_file()} == files_before
    # a new as-of date that crashes leaves no partition behind
    calls["n"] = 0
    r = run_cli(small_repo, small_bundle, out, "--as-of", (AS_OF - timedelta(days=3)).isoformat(), "--chunk-rows", "100")
    assert r.exit_code != 0
    assert sorted(p.name for p in (out["pq"] / TABLE).iterdir()) == ["as_of_date=2026-10-20"]


def test_status_exit_codes(small_repo, small_bundle, out):
    runner = CliRunner()
    absent = runner.invoke(main, ["score", "status", "--db", str(out["db"])])
    assert absent.exit_code == 1 and "no batch runs" in absent.output
    assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat()).exit_code == 0
    fresh = runner.invoke(main, ["score", "status", "--db", str(out["db"]), "--max-age", "1h"])
    assert fresh.exit_code == 0 and "churn/" in fresh.output
    with duckdb.connect(str(out["db"])) as con:
        con.execute(f"UPDATE {TABLE} SET scored_at = scored_at - INTERVAL 2 DAY")
    stale = runner.invoke(main, ["score", "status", "--db", str(out["db"]), "--max-age", "26h"])
    assert stale.exit_code == 1 and "stale" in stale.output


def test_ids_file_duplicates_scored_once(small_repo, small_bundle, out, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n7\n5\n\n# a comment\n9\n")
    r = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat(), "--customers", str(ids))
    assert r.exit_code == 0, r.output
    assert "1 duplicate" in r.output
    assert rows(out["db"])["customer_id"].tolist() == [5, 7, 9]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nope"], "no model version 'nope'"),
        (["--as-of", "2099-01-01T00:00:00Z"], "in the future"),
        (["--as-of", "2001-01-01T00:00:00Z"], "before any data"),
        (["--as-of", "yesterday-ish"], "not a time"),
    ],
)
def test_bad_input_one_line_nothing_damaged(small_repo, small_bundle, out, args, message):
    assert run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat()).exit_code == 0
    before = rows(out["db"])
    if "--as-of" not in args:
        args = ["--as-of", AS_OF.isoformat(), *args]
    r = run_cli(small_repo, small_bundle, out, *args)
    assert r.exit_code != 0
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    pd.testing.assert_frame_equal(rows(out["db"]), before)


def test_junk_ids_and_unwritable_output(small_repo, small_bundle, out, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("5\nseven\n-3\n9\n")
    r = run_cli(small_repo, small_bundle, out, "--as-of", AS_OF.isoformat(), "--customers", str(ids))
    assert r.exit_code != 0 and "2 line(s)" in r.output and "line 2" in r.output
    assert not out["db"].exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _, model_dir = small_bundle
    r = CliRunner().invoke(main, ["score", "--repo", str(small_repo), "--model-dir", str(model_dir), "--as-of", AS_OF.isoformat(),
                                  "--db", str(blocker / "p.duckdb"), "--parquet-dir", str(out["pq"])])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
