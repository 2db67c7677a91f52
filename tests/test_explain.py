"""Explanations (skewless/explain.py): exact, and the same online and offline.

The invariant that makes a reason trustworthy: base value + the contributions = the model's
margin for that row, for every row; and the explanation of a customer at T does not depend on
the path that computed its features.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd
import xgboost as xgb
from fastapi.testclient import TestClient

from batch.retrieval import active_customers, resolve, stream_features
from online.app import create_app
from online.settings import Settings
from skewless.explain import explain
from skewless.score import feature_matrix, score
from training.dataset import historical_features


def test_contributions_sum_to_the_margin_for_every_row(small_store, small_bundle):
    result, _ = small_bundle
    bundle = result.bundle
    at = datetime.fromisoformat("2026-10-31T12:00:00+00:00")
    ids = active_customers(small_store, at)
    frame = pd.concat(stream_features(small_store, resolve(small_store, bundle.feature_service), ids, at))
    explained = explain(bundle, frame, top=len(bundle.features))
    assert len(explained) == len(frame) > 100

    matrix = feature_matrix(bundle.features, frame)
    types = ["c" if s.is_categorical else "float" for s in bundle.features]
    dm = xgb.DMatrix(matrix, feature_names=bundle.feature_names, feature_types=types, enable_categorical=True, missing=math.nan)
    margins = bundle.booster.predict(dm, output_margin=True).astype(np.float64)
    walked = score(bundle, frame).probability  # the tree walk every path scores with
    for e, margin, p in zip(explained, margins, walked):
        assert abs(e.base_value + sum(r.contribution for r in e.reasons) - margin) <= 1e-5
        assert abs(e.margin - margin) <= 1e-5
        assert abs(1 / (1 + math.exp(-e.margin)) - p) <= 1e-6
        assert [abs(r.contribution) for r in e.reasons] == sorted((abs(r.contribution) for r in e.reasons), reverse=True)
        assert all(r.direction == ("raises" if r.contribution > 0 else "lowers") for r in e.reasons)


def test_online_and_offline_explanations_of_a_customer_at_t_are_equal(live, tmp_path):
    ids = sorted(pd.read_parquet(live.repo / "data" / "customer_profiles.parquet")["customer_id"].unique().tolist())[:40]
    settings = Settings(repo_path=live.repo, model_dir=live.model_dir, feature_log_dir=tmp_path / "log")
    with TestClient(create_app(settings)) as client:
        batch = client.post("/predict/batch?explain=true&explain_top=4", json={"customer_ids": ids}).json()["predictions"]
        one = client.post("/predict?explain=true", json={"customer_id": ids[0]})
        plain = client.post("/predict", json={"customer_id": ids[0]})
        bad = client.post("/predict?explain=true&explain_top=0", json={"customer_id": ids[0]})
    served = [p for p in batch if p["status"] == "ok"]
    assert len(served) > 20 and all(len(p["explanation"]["reasons"]) == 4 for p in served)
    assert one.status_code == 200 and len(one.json()["explanation"]["reasons"]) == 3
    assert "explanation" not in plain.json()
    assert bad.status_code == 422

    as_of = datetime.fromisoformat(served[0]["features_as_of"])
    keys = pd.DataFrame({"customer_id": [p["customer_id"] for p in served], "event_timestamp": as_of})
    offline = historical_features(live.store, live.bundle.feature_service, keys)
    for p, e in zip(served, explain(live.bundle, offline, top=4)):
        online = p["explanation"]
        assert abs(online["base_value"] - e.base_value) <= 1e-9 and abs(online["margin"] - e.margin) <= 1e-6
        assert [r["feature"] for r in online["reasons"]] == [r.feature for r in e.reasons]
        assert np.allclose([r["contribution"] for r in online["reasons"]], [r.contribution for r in e.reasons], atol=1e-6)
        assert abs(1 / (1 + math.exp(-online["margin"])) - p["churn_probability"]) <= 1e-6


def test_batch_reasons_are_committed_with_the_run_and_equal_the_offline_explanation(small_store, small_bundle, tmp_path):
    import duckdb

    from batch.job import run_batch

    result, model_dir = small_bundle
    bundle = result.bundle
    at = datetime.fromisoformat("2026-10-31T12:00:00+00:00")
    summary = run_batch(small_store, bundle, at, None, tmp_path / "p.duckdb", tmp_path / "p", chunk_rows=300,
                        explain_top=3, explain_segments=("High", "Medium"))
    with duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True) as con:
        reasons = con.execute("SELECT * FROM churn_reasons ORDER BY customer_id, rank").df()
        scored = con.execute("SELECT customer_id, risk_segment, run_id FROM churn_predictions").df()
    wanted = scored[scored["risk_segment"].isin(["High", "Medium"])]
    assert summary.explained == len(wanted) > 0 and set(reasons["customer_id"]) == set(wanted["customer_id"])
    assert (reasons.groupby("customer_id").size() == 3).all() and set(reasons["run_id"]) == {summary.run_id}

    ids = sorted(wanted["customer_id"].tolist())[:25]
    offline = historical_features(small_store, bundle.feature_service, pd.DataFrame({"customer_id": ids, "event_timestamp": at}))
    for cid, e in zip(ids, explain(bundle, offline, top=3)):
        mine = reasons[reasons["customer_id"] == cid]
        assert mine["feature"].tolist() == [r.feature for r in e.reasons]
        assert np.allclose(mine["contribution"], [r.contribution for r in e.reasons], atol=1e-6)
        assert abs(mine["base_value"].iloc[0] - e.base_value) <= 1e-9

    # a re-run without --explain-top replaces the run's reasons with none
    run_batch(small_store, bundle, at, None, tmp_path / "p.duckdb", tmp_path / "p", chunk_rows=300)
    with duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM churn_reasons").fetchall()[0][0] == 0


def test_the_explain_command_prints_one_customers_reasons(small_repo, small_bundle):
    from click.testing import CliRunner

    from skewless.cli import main

    result, model_dir = small_bundle
    at = "2026-10-31T12:00:00Z"
    ids = active_customers(open_store_of(small_repo), datetime.fromisoformat("2026-10-31T12:00:00+00:00"))
    runner = CliRunner()
    ok = runner.invoke(main, ["explain", "--customer", str(int(ids.iloc[0])), "--as-of", at, "--top", "3", "--repo", str(small_repo), "--model-dir", str(model_dir)])
    assert ok.exit_code == 0, ok.output
    assert "churn probability" in ok.output and len([line for line in ok.output.splitlines() if "raises" in line or "lowers" in line]) == 3
    unknown = runner.invoke(main, ["explain", "--customer", "999999999", "--as-of", at, "--repo", str(small_repo), "--model-dir", str(model_dir)])
    assert unknown.exit_code == 1 and "has no features" in unknown.output and "Traceback" not in unknown.output
    lonely = runner.invoke(main, ["score", "--as-of", at, "--explain-segment", "High", "--repo", str(small_repo), "--model-dir", str(model_dir)])
    assert lonely.exit_code != 0 and "--explain-segment goes with --explain-top" in lonely.output


def open_store_of(repo):
    from skewless.store import open_store

    return open_store(repo)
