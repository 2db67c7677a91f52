"""Train the churn model on a point-in-time training set and write a versioned bundle.

Evaluation is honest by construction: the split is by label time (validation = the last label
dates), and training labels end a full label horizon before validation starts, so no training
outcome overlaps a validation row's future. The model is compared with a logistic-regression
baseline and with the generator's true hazard (the ceiling no model can beat). The decision
threshold is chosen on validation (best F1) and stored in the bundle, with risk segments
bounded by it (risk_segments).
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, log_loss, precision_recall_curve, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skewless.bundle import DEFAULT_MODEL_DIR, MODEL_NAME, Bundle, FeatureSpec, load_bundle, registered, save_bundle, service_contract
from training.dataset import TrainingSet, build_training_set, write_training_set
from skewless.labels import LABEL_HORIZON_DAYS
from skewless.score import feature_matrix, predict, score
from skewless.trees import Forest

SERVICE = "churn_v1"  # the default contract; `skewless train --feature-service churn_v2` adds the live features
SEED = 7
VALIDATION_DATES = 3  # the last weekly label dates are held out
HIGH_RISK_LIFT = 2.0  # High risk: at least twice as likely to churn as the average customer
XGB_PARAMS = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "max_depth": 4,
    "eta": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 10,
    "max_cat_to_onehot": 1,
    "seed": SEED,
    "nthread": 2,
}
MAX_ROUNDS = 600
ROUNDS = 200  # used only when the training window has a single label date


@dataclass
class TrainResult:
    bundle: Bundle
    metrics: dict
    rows: dict
    seconds: dict


def time_split(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Boolean masks (train, validation): validation = last label dates, train ends a horizon before."""
    dates = np.sort(frame["event_timestamp"].unique())
    if len(dates) < VALIDATION_DATES + 2:
        raise ValueError(f"need at least {VALIDATION_DATES + 2} label dates to split by time, got {len(dates)}")
    first_val = pd.Timestamp(dates[-VALIDATION_DATES])
    valid = frame["event_timestamp"] >= first_val
    train = frame["event_timestamp"] + timedelta(days=LABEL_HORIZON_DAYS) <= first_val
    if not train.any():
        raise ValueError("no label dates end a 30-day horizon before validation starts: generate more --days")
    return train, valid


def feature_specs(store, ts: TrainingSet, train: pd.Series) -> list[FeatureSpec]:
    """The contract from the registry, with categories learned from the training rows only."""
    specs = []
    for name, dtype in service_contract(store, ts.feature_service):
        cats = None
        if dtype == "String":
            cats = tuple(sorted(ts.frame.loc[train, name].dropna().unique().tolist()))
        specs.append(FeatureSpec(name, dtype, cats))
    return specs


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict]:
    edges = np.quantile(p, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        if m.any():
            rows.append({"bin": b, "rows": int(m.sum()), "mean_predicted": float(p[m].mean()), "observed_rate": float(y[m].mean())})
    return rows


def metrics_for(y: np.ndarray, p: np.ndarray) -> dict:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, p)),
    }


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def risk_segments(threshold: float, churn_rate: float) -> list[dict]:
    """Low / Medium / High bounds for this model, stored in the bundle.

    Low ends at the decision threshold, so a segment never contradicts the prediction (Low is
    exactly churn_prediction 0); High starts where the churn probability is HIGH_RISK_LIFT times
    the validation churn rate (never below the threshold). Fixed bounds (say 0.3 / 0.6) put
    nearly every customer of a churn model with a ~10% base rate in Low, predicted churners
    included.
    """
    high = max(threshold, HIGH_RISK_LIFT * churn_rate)
    return [{"name": "Low", "upper": threshold}, {"name": "Medium", "upper": high}, {"name": "High", "upper": None}]


def baseline_model(specs: list[FeatureSpec]):
    """Logistic regression with imputation and one-hot categories: the bar XGBoost must clear."""
    num = [s.name for s in specs if not s.is_categorical]
    cat = [s.name for s in specs if s.is_categorical]
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()), num),
            ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="__missing__"), OneHotEncoder(handle_unknown="ignore")), cat),
        ]
    )
    return make_pipeline(pre, LogisticRegression(max_iter=1000, C=1.0))


def boosting_rounds(frame, train_mask, x_all, y, names, feature_types) -> int:
    """Number of boosting rounds, by early stopping on the last training label date.

    The validation dates stay untouched: rounds are chosen inside the training window (earlier
    dates fit, the latest one scores), then the model is refit on the whole training window.
    """
    dates = frame.loc[train_mask, "event_timestamp"]
    inner_val = (train_mask & (frame["event_timestamp"] == dates.max())).to_numpy()
    inner_fit = (train_mask & (frame["event_timestamp"] < dates.max())).to_numpy()
    if not inner_fit.any():
        return ROUNDS
    dfit = xgb.DMatrix(x_all[inner_fit], label=y[inner_fit], feature_names=names, feature_types=feature_types, enable_categorical=True)
    dval = xgb.DMatrix(x_all[inner_val], label=y[inner_val], feature_names=names, feature_types=feature_types, enable_categorical=True)
    probe = xgb.train(XGB_PARAMS, dfit, num_boost_round=MAX_ROUNDS, evals=[(dval, "inner")], early_stopping_rounds=40, verbose_eval=False)
    return max(20, probe.best_iteration + 1)


def scorer_check(walked: np.ndarray, xgboost_own: np.ndarray, forest: Forest) -> dict:
    """What the manifest says of the scorer its metrics came from: the compiled loop every path
    uses for this forest, and how far its validation probabilities are from XGBoost's own predict
    (bit-equal by construction; a difference here would mean it and XGBoost disagree on a rule)."""
    same = walked == xgboost_own.astype(np.float64)
    loop = "QuickScorer" if forest.quick is not None else "the walk"
    return {
        "name": f"skewless/trees.py ({loop} over XGBoost's trees, compiled by numba)",
        "rows_compared_with_xgboost": int(len(walked)),
        "bit_equal_to_xgboost": float(same.mean()) if len(walked) else 1.0,
        "max_abs_difference": float(np.max(np.abs(walked - xgboost_own))) if len(walked) else 0.0,
    }


def train(
    store,
    repo_path: Path,
    model_dir: Path = DEFAULT_MODEL_DIR,
    as_of: datetime | None = None,
    max_rows: int | None = None,
    step: Callable[[str], None] = lambda _: None,
    feature_service: str = SERVICE,
    promote: bool = True,
) -> TrainResult:
    """Train on `feature_service`'s point-in-time training set and save a bundle; `latest` moves to
    it when `promote` (the command), or stays for a gate to decide (orchestration/gate.py)."""
    seconds = {}
    t = time.perf_counter()
    step("retrieve point-in-time features")
    ts = build_training_set(store, repo_path, feature_service, as_of, max_rows)
    definitions = registered(store, feature_service).definitions  # what the features mean as this model learns them
    seconds["retrieve"] = time.perf_counter() - t
    train_mask, valid_mask = time_split(ts.frame)
    specs = feature_specs(store, ts, train_mask)
    y = ts.frame["churned"].to_numpy()

    t = time.perf_counter()
    step("train xgboost")
    # The same function that batch and online use to score builds the training matrix, so
    # the model learns from exactly what they will send.
    x_all = feature_matrix(specs, ts.frame)
    feature_types = ["c" if s.is_categorical else "float" for s in specs]
    names = [s.name for s in specs]
    rounds = boosting_rounds(ts.frame, train_mask, x_all, y, names, feature_types)
    tm = train_mask.to_numpy()
    dtrain = xgb.DMatrix(x_all[tm], label=y[tm], feature_names=names, feature_types=feature_types, enable_categorical=True)
    booster = xgb.train(XGB_PARAMS, dtrain, num_boost_round=rounds)
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    step("evaluate on later label dates")
    v = valid_mask.to_numpy()
    yv = y[v]
    # the metrics come from the scorer every path uses (skewless/trees.py), checked against XGBoost's own predict
    x_valid = np.ascontiguousarray(x_all[v])
    forest = Forest.from_booster(booster)
    p_model = forest.probabilities(x_valid).astype(np.float64)
    scorer = scorer_check(p_model, predict(booster, x_valid), forest)
    base = baseline_model(specs)
    base.fit(ts.frame.loc[train_mask, names], y[train_mask.to_numpy()])
    p_base = base.predict_proba(ts.frame.loc[valid_mask, names])[:, 1]
    p_true = ts.frame.loc[valid_mask, "true_churn_probability"].to_numpy()
    threshold = best_f1_threshold(yv, p_model)
    metrics = {
        "model": metrics_for(yv, p_model),
        "baseline_logistic": metrics_for(yv, p_base),
        "ceiling_true_hazard": metrics_for(yv, p_true),
        "calibration": calibration_table(yv, p_model),
        "validation_churn_rate": float(yv.mean()),
    }
    seconds["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    step("save bundle")
    with tempfile.TemporaryDirectory() as tmp:
        ts_path = Path(tmp) / "training_set.parquet"
        fingerprint = write_training_set(ts, ts_path)
        version = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + fingerprint[:8]
        manifest = {
            "model_name": MODEL_NAME,
            "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "feature_service": feature_service,
            "feast_project": store.project,
            "features": [s.to_json() for s in specs],
            "definitions": definitions,
            "label": {
                "column": "churned",
                "definition": f"customer cancels within {LABEL_HORIZON_DAYS} days after the label time",
                "horizon_days": LABEL_HORIZON_DAYS,
            },
            "training_window": {
                "as_of": ts.metadata["as_of"],
                "train_labels": [ts.frame.loc[train_mask, "event_timestamp"].min().isoformat(), ts.frame.loc[train_mask, "event_timestamp"].max().isoformat()],
                "validation_labels": [ts.frame.loc[valid_mask, "event_timestamp"].min().isoformat(), ts.frame.loc[valid_mask, "event_timestamp"].max().isoformat()],
            },
            "rows": {"train": int(train_mask.sum()), "validation": int(valid_mask.sum())},
            "metrics": metrics,
            "decision_threshold": threshold,
            "threshold_rule": "maximises F1 on the validation label dates",
            "risk_segments": risk_segments(threshold, metrics["validation_churn_rate"]),
            "risk_segment_rule": f"Low below the decision threshold; High from {HIGH_RISK_LIFT:g}x the validation churn rate",
            "scorer": scorer,
            "params": {**XGB_PARAMS, "num_boost_round": booster.num_boosted_rounds()},
            "training_data_sha256": fingerprint,
            "libraries": {pkg: pkg_version(pkg) for pkg in ("feast", "xgboost-cpu", "pandas", "numpy", "scikit-learn", "duckdb")}
            | {"python": platform.python_version()},
        }
        path = save_bundle(booster, manifest, model_dir, training_set=ts_path, promote=promote)
    bundle = load_bundle(path.name, model_dir, store=store)
    if not np.array_equal(score(bundle, ts.frame.loc[valid_mask]).probability, p_model):
        raise RuntimeError(f"bundle {path} does not reproduce the trained model's validation scores")
    seconds["save"] = time.perf_counter() - t
    return TrainResult(bundle, metrics, {"train": int(train_mask.sum()), "validation": int(valid_mask.sum())}, seconds)
