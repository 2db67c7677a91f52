"""Training: a point-in-time training set, a model that learns, and a bundle that guards itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import copy_repo, feast_apply

from skewless.bundle import MANIFEST_FILE, MODEL_FILE, BundleError, load_bundle
from training.dataset import KEYS, historical_features
from skewless.score import feature_matrix, predict, score
from skewless.store import open_store
from training.train import time_split

AUC_FLOOR = 0.62  # on the 1k data with seed 7; the true hazard's ceiling there is ~0.79


@pytest.fixture(scope="module")
def trained(small_bundle):
    return small_bundle


def test_model_beats_baseline_and_floor_below_ceiling(trained):
    result, _ = trained
    m = result.metrics
    assert m["model"]["roc_auc"] > m["baseline_logistic"]["roc_auc"]
    assert m["model"]["roc_auc"] >= AUC_FLOOR
    assert m["model"]["roc_auc"] < m["ceiling_true_hazard"]["roc_auc"]
    assert len(m["calibration"]) == 10


def test_split_is_by_time_with_a_horizon_gap(trained):
    result, _ = trained
    ts = pd.read_parquet(result.bundle.path / "training_set.parquet")
    train_mask, valid_mask = time_split(ts)
    last_train = ts.loc[train_mask, "event_timestamp"].max()
    first_valid = ts.loc[valid_mask, "event_timestamp"].min()
    assert last_train + pd.Timedelta(days=30) <= first_valid


def test_training_rows_are_the_point_in_time_features(trained, small_store):
    """The saved training set equals a fresh retrieval for the same keys: nothing computed on the side."""
    result, _ = trained
    ts = pd.read_parquet(result.bundle.path / "training_set.parquet")
    sample = ts.sample(50, random_state=1)
    fresh = historical_features(small_store, "churn_v1", sample[KEYS])
    names = result.bundle.feature_names
    left = sample.set_index(KEYS)[names].sort_index()
    right = fresh.set_index(KEYS)[names].sort_index()
    pd.testing.assert_frame_equal(left, right, check_dtype=False)


def test_manifest_records_the_contract(trained, small_store):
    result, _ = trained
    b = result.bundle
    man = b.manifest
    assert man["feature_service"] == "churn_v1" and man["feast_project"] == "skewless"
    svc = small_store.get_feature_service("churn_v1")
    assert b.feature_names == [f.name for p in svc.feature_view_projections for f in p.features]
    plan = next(f for f in b.features if f.name == "plan")
    assert plan.categories == ("basic", "business", "pro")  # `enterprise` is never seen in training
    assert 0 < man["decision_threshold"] < 1
    low, medium, high = man["risk_segments"]
    assert (low["name"], medium["name"], high) == ("Low", "Medium", {"name": "High", "upper": None})
    assert low["upper"] == man["decision_threshold"]
    assert medium["upper"] == max(man["decision_threshold"], 2 * man["metrics"]["validation_churn_rate"])
    assert len(man["training_data_sha256"]) == 64
    assert {"feast", "xgboost-cpu", "python"} <= set(man["libraries"])


def test_round_trip_is_bit_for_bit(trained):
    result, model_dir = trained
    ts = pd.read_parquet(result.bundle.path / "training_set.parquet")
    again = load_bundle(result.bundle.version, model_dir)
    latest = load_bundle("latest", model_dir)
    assert latest.version == again.version
    shuffled = ts[list(reversed(ts.columns))]  # any column order
    assert np.array_equal(score(result.bundle, ts).probability, score(again, shuffled).probability)


def test_risk_segment_agrees_with_the_prediction(trained):
    """Low is exactly 'predicted to stay': a customer is never predicted to churn and Low risk."""
    b = trained[0].bundle
    ts = pd.read_parquet(b.path / "training_set.parquet")
    s = score(b, ts)
    low = np.asarray(s.risk_segment) == "Low"
    assert np.array_equal(low, s.prediction == 0)
    assert low.any() and not low.all()


def test_scoring_handles_unseen_and_missing_the_same_way(trained):
    b = trained[0].bundle
    rows = pd.DataFrame([{n: None for n in b.feature_names} for _ in range(2)])
    rows.loc[0, "plan"] = "enterprise"  # unseen category -> missing
    dict_rows = {n: [None, None] for n in b.feature_names}
    dict_rows["plan"] = ["enterprise", float("nan")]
    p1 = score(b, rows).probability
    p2 = score(b, dict_rows).probability
    assert np.array_equal(p1, p2) and p1[0] == p1[1]


def test_fast_predict_is_inplace_predict_bit_for_bit(trained):
    """score() calls XGBoost's C predict directly (skewless/score.py:predict); it must be exactly
    inplace_predict, on the training rows, on missing values and on one row at a time."""
    b = trained[0].bundle
    ts = pd.read_parquet(b.path / "training_set.parquet")
    matrix = feature_matrix(b.features, ts)
    matrix[::7, 3] = np.nan
    assert np.array_equal(predict(b.booster, matrix), b.booster.inplace_predict(matrix, validate_features=False))
    for row in matrix[:20]:
        one = row.reshape(1, -1).copy()
        assert np.array_equal(predict(b.booster, one), b.booster.inplace_predict(one, validate_features=False))
    with pytest.raises(ValueError, match="float32"):
        predict(b.booster, matrix.astype(np.float64))


def test_feature_matrix_is_the_same_from_a_frame_and_from_columns(trained):
    """Batch and training hand feature_matrix a DataFrame, the online and stream paths a dict of
    lists (built another way, for speed): the model must get the same float32 bits from both,
    with missing values, unseen categories and integer columns among them."""
    b = trained[0].bundle
    ts = pd.read_parquet(b.path / "training_set.parquet").head(300).astype(object)
    ts.loc[ts.index[::5], b.feature_names[0]] = None
    ts.loc[ts.index[::7], "plan"] = "enterprise"  # unseen -> missing
    columns = {n: [None if v is None or (isinstance(v, float) and v != v) else v for v in ts[n]] for n in b.feature_names}
    numeric = next(f.name for f in b.features if not f.is_categorical)
    ts.loc[ts.index[3], numeric] = None
    columns[numeric][3] = float("nan")  # NaN or None: both missing
    from_frame = feature_matrix(b.features, ts[b.feature_names].convert_dtypes(convert_string=False))
    from_columns = feature_matrix(b.features, columns)
    assert from_columns.dtype == np.float32 and from_columns.flags.c_contiguous
    assert from_frame.tobytes() == from_columns.tobytes()
    assert feature_matrix(b.features, {n: [] for n in b.feature_names}).shape == (0, len(b.features))


def copy_bundle(trained, tmp_path):
    result, model_dir = trained
    dest = tmp_path / "models" / "churn" / result.bundle.version
    shutil.copytree(result.bundle.path, dest)
    return dest, tmp_path / "models"


def test_tampered_model_is_refused(trained, tmp_path):
    dest, root = copy_bundle(trained, tmp_path)
    with open(dest / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(dest.name, root)


def test_tampered_manifest_is_refused(trained, tmp_path):
    dest, root = copy_bundle(trained, tmp_path)
    man = json.loads((dest / MANIFEST_FILE).read_text())
    man["features"] = man["features"][1:] + man["features"][:1]  # reorder the features
    (dest / MANIFEST_FILE).write_text(json.dumps(man))
    with pytest.raises(BundleError, match="manifest was changed"):
        load_bundle(dest.name, root)


def test_unknown_version_is_refused(trained):
    _, model_dir = trained
    with pytest.raises(BundleError, match="no model version 'nope'"):
        load_bundle("nope", model_dir)
    r = subprocess.run([sys.executable, "-m", "skewless", "model", "nope", "--model-dir", str(model_dir)], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "nope" in r.stderr


def test_bundle_is_refused_when_the_registry_contract_changes(trained, tmp_path, redis_endpoint, small_repo):
    """Change a feature view, re-apply, and the bundle no longer loads against that registry."""
    repo = copy_repo(tmp_path / "feature_repo")
    for f in (small_repo / "data").glob("*.parquet"):
        shutil.copy(f, repo / "data")
    defs = repo / "definitions.py"
    text = defs.read_text()
    assert '"spend_7d",\n            "spend_30d",' in text
    defs.write_text(text.replace('"spend_7d",\n            "spend_30d",', '"spend_30d",'))
    assert feast_apply(repo, redis_endpoint).returncode == 0
    result, model_dir = trained
    with pytest.raises(BundleError, match=r"missing \[\('spend_7d', 'Float64'\)\]"):
        load_bundle(result.bundle.version, model_dir, store=open_store(repo))


def test_an_unknown_feature_service_is_one_line_naming_the_registered_ones(small_repo, tmp_path):
    from click.testing import CliRunner

    from skewless.cli import main

    r = CliRunner().invoke(main, ["train", "--repo", str(small_repo), "--model-dir", str(tmp_path), "--feature-service", "churn_v9"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "'churn_v9'" in r.output and "churn_v1" in r.output and not any(tmp_path.iterdir())


@pytest.mark.parametrize("old, new, refused", [
    ("ttl=timedelta(days=30),", "ttl=timedelta(days=7),", "customer_activity"),  # the same features, nulled sooner
    ("whole_seconds(earlier)) / 86400.0", "whole_seconds(earlier)) / 3600.0", "customer_derived"),  # days became hours
    ('description="Ratios and time-relative features, defined once for every path."',
     'description="Ratios, time-relative features."', None),  # words only
    ("    def ratio(num, den):", "    # a comment\n    def ratio(num, den):", None),
])
def test_bundle_is_refused_when_a_definition_behind_its_features_changes(trained, tmp_path, redis_endpoint, small_repo, old, new, refused):
    """Same names and types, other meaning: a TTL or a transform's code changed since training."""
    repo = copy_repo(tmp_path / "feature_repo")
    for f in (small_repo / "data").glob("*.parquet"):
        shutil.copy(f, repo / "data")
    defs = repo / "definitions.py"
    assert defs.read_text().count(old) == 1
    defs.write_text(defs.read_text().replace(old, new))
    assert feast_apply(repo, redis_endpoint).returncode == 0
    result, model_dir = trained
    assert set(result.bundle.manifest["definitions"]) == {"customer_profile", "customer_activity", "customer_derived"}
    if refused is None:
        load_bundle(result.bundle.version, model_dir, store=open_store(repo))
    else:
        with pytest.raises(BundleError, match=rf"trained on {refused} as defined then.*retrain"):
            load_bundle(result.bundle.version, model_dir, store=open_store(repo))
