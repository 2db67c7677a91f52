"""Checks that can fail, with their figures as metadata.

- `scores_fresh` (batch_scores): the newest full run's age against the budget, as `skewless score
  status` computes it (batch/status.py). Blocking: stale scores are not published over fresh ones.
- `online_batch_parity` (online_features): a sample scored from Redis as /predict would, against
  the batch job at the same instant (monitoring/parity.py). Blocking: a Redis that answers
  differently from the offline store must not have scores published into it.
- `watermark_lag` (online_features): each view the serving bundle reads has a watermark in this
  Redis, within its freshness budget (feast_plugins/watermark.py, what /ready checks).
- `served_features_skew` and `served_features_drift` (online_features): the skew report over the
  service's feature log (monitoring/skew_report.py): any served value that differs from
  point-in-time truth fails; PSI above the threshold warns.
- `model_quality` (batch_scores): the batch runs' predictions against the labels that arrived
  since (monitoring/quality.py, what `skewless quality` prints): a week whose ROC-AUC is below the
  serving bundle's validation by more than the tolerance warns.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from orchestration.assets import batch_scores, load_serving, online_features, sample_ids
from orchestration.resources import SkewlessResource
from skewless.bundle import Bundle, BundleError

NO_BUNDLE = "no bundle served yet (`latest` missing): materialize serving_bundle; nothing to check against"


@contextlib.contextmanager
def serving_online(skewless: SkewlessResource) -> Iterator[tuple[object, Bundle | None]]:
    """The store inside the named Redis, and the bundle served now (None before the first is)."""
    with skewless.online():
        store = skewless.store()
        try:
            bundle = load_serving(skewless, store)
        except BundleError:
            bundle = None
        yield store, bundle


@dg.asset_check(asset=batch_scores, blocking=True, description="The newest full batch run is within its freshness budget.")
def scores_fresh(skewless: SkewlessResource) -> dg.AssetCheckResult:
    from batch.status import check_freshness

    if not skewless.db.exists():
        return dg.AssetCheckResult(passed=False, metadata={"reason": f"no batch run yet: {skewless.db} does not exist"})
    fresh = check_freshness(skewless.db, skewless.max_age)
    ages = {r.model_name: (fresh.now - r.scored_at.to_pydatetime()).total_seconds() / 3600 for r in fresh.runs.itertuples()}
    return dg.AssetCheckResult(passed=fresh.ok, metadata={
        "budget_hours": skewless.score_max_age_hours, **{f"age_hours {m}": round(a, 2) for m, a in ages.items()},
        "stale": ", ".join(fresh.stale) or "none", "newest_runs": ", ".join(fresh.runs["run_id"]) or "none"})


@dg.asset_check(asset=online_features, blocking=True, description="Online answers equal the batch job's at the same instant, on a sample.")
def online_batch_parity(skewless: SkewlessResource) -> dg.AssetCheckResult:
    from monitoring.parity import parity_sample

    with serving_online(skewless) as (store, bundle):
        if bundle is None:
            return dg.AssetCheckResult(passed=True, metadata={"note": NO_BUNDLE})
        result = parity_sample(store, bundle, sample_ids(skewless))
    return dg.AssetCheckResult(passed=result.ok, metadata={
        "bundle": f"{bundle.name}/{bundle.version}", "feature_service": bundle.feature_service, "at": result.at.isoformat(),
        "compared": result.compared, "differing": len(result.differing), "result": result.describe()})


@dg.asset_check(asset=online_features, description="Each view the serving bundle reads is loaded in this Redis, within its budget.")
def watermark_lag(skewless: SkewlessResource) -> dg.AssetCheckResult:
    from feast_plugins.watermark import check_views
    from online.features import FeatureLookup

    with serving_online(skewless) as (store, bundle):
        if bundle is None:
            return dg.AssetCheckResult(passed=True, metadata={"note": NO_BUNDLE})
        fresh = check_views(store, [v for v, _ in FeatureLookup(store, bundle.feature_service).reads])
    return dg.AssetCheckResult(passed=fresh.ok, metadata={
        **{f"lag_hours {view}": (round(age / 3600, 2) if age is not None else -1.0) for view, age in fresh.ages.items()},
        "problems": "; ".join(fresh.problems) or "none"})


@dg.multi_asset_check(specs=[
    dg.AssetCheckSpec("served_features_skew", asset=online_features, description="Served features equal point-in-time truth (0 mismatches)."),
    dg.AssetCheckSpec("served_features_drift", asset=online_features, description="PSI of served features against training (warns)."),
])
def served_features(skewless: SkewlessResource):
    from monitoring.skew_report import build_report

    store = skewless.store()
    try:
        bundle = load_serving(skewless, store)
        report = build_report(store, bundle, Path(skewless.feature_log_dir), skewless.db if skewless.db.exists() else None, None)
    except (ValueError, BundleError) as exc:  # no bundle, or nothing logged for it yet: nothing served, nothing skewed
        note = str(exc)
        yield dg.AssetCheckResult(check_name="served_features_skew", passed=True, metadata={"note": note})
        yield dg.AssetCheckResult(check_name="served_features_drift", passed=True, metadata={"note": note})
        return
    worst = {s.feature: s.differing for s in report.skews if s.differing}
    yield dg.AssetCheckResult(check_name="served_features_skew", passed=report.rows_differing == 0, metadata={
        "requests": report.requests, "values_compared": report.values_compared, "values_differing": report.values_differing,
        "rows_differing": report.rows_differing, "features_differing": ", ".join(f"{k} ({v})" for k, v in worst.items()) or "none"})
    drift = report.drift
    over = drift[drift["psi"] > skewless.psi_warn]
    yield dg.AssetCheckResult(check_name="served_features_drift", passed=over.empty, severity=dg.AssetCheckSeverity.WARN, metadata={
        "threshold": skewless.psi_warn, "max_psi": float(drift["psi"].max()) if len(drift) else 0.0,
        "over_threshold": ", ".join(f"{r.name} ({r.psi:.3f})" for r in over.itertuples()) or "none",
        "note": report.drift_note or ""})


@dg.asset_check(asset=batch_scores, description="Live ROC-AUC per week, as labels arrive, against the serving bundle's validation (warns).")
def model_quality(skewless: SkewlessResource) -> dg.AssetCheckResult:
    from monitoring.quality import below_validation, joined, weekly
    from skewless.labels import LABELS_FILE

    labels = skewless.repo / "data" / LABELS_FILE
    if not skewless.db.exists() or not labels.is_file():
        return dg.AssetCheckResult(passed=True, metadata={"note": f"nothing to judge yet: {skewless.db} or {labels} is missing"})
    try:
        bundle = load_serving(skewless, skewless.store())
    except BundleError as exc:
        return dg.AssetCheckResult(passed=True, metadata={"note": str(exc)})
    validation = bundle.manifest["metrics"]["model"]["roc_auc"]
    weeks = weekly(joined(skewless.db, labels), bundle.threshold)
    low = below_validation(weeks, validation, skewless.auc_tolerance)
    judged = [w for w in weeks if w.roc_auc is not None]
    return dg.AssetCheckResult(passed=not low, severity=dg.AssetCheckSeverity.WARN, metadata={
        "validation_roc_auc": validation, "tolerance": skewless.auc_tolerance,
        **{f"roc_auc {w.week}": round(w.roc_auc, 4) for w in judged},
        "pending_predictions": sum(w.pending for w in weeks), "below_validation": ", ".join(w.week for w in low) or "none"})


checks = [scores_fresh, online_batch_parity, watermark_lag, served_features, model_quality]
