"""Live model quality (monitoring/quality.py): predictions joined to the labels that arrived later.

Batch runs at three weekly label times and one after the last label: each week's figures must
be sklearn's on the rows an independent exact join gives, and the run whose outcomes are not
known yet must be reported as pending, not as customers who stayed.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from batch.job import run_batch
from monitoring.quality import below_validation, joined, weekly
from skewless.cli import main
from skewless.labels import LABELS_FILE


@pytest.fixture(scope="module")
def runs(small_store, small_bundle, small_repo, tmp_path_factory):
    bundle = small_bundle[0].bundle
    out = tmp_path_factory.mktemp("quality")
    labels = pd.read_parquet(small_repo / "data" / LABELS_FILE)
    dates = sorted(labels["event_timestamp"].unique())[-3:]
    for at in [*dates, dates[-1] + timedelta(days=10)]:
        run_batch(small_store, bundle, pd.Timestamp(at).to_pydatetime(), None, out / "p.duckdb", out / "p")
    return out / "p.duckdb", labels, [pd.Timestamp(d) for d in dates], bundle


def test_weekly_quality_is_sklearn_on_the_joined_rows_and_unlabelled_weeks_are_pending(runs, small_repo):
    db, labels, dates, bundle = runs
    weeks = weekly(joined(db, small_repo / "data" / LABELS_FILE), bundle.threshold)
    assert len(weeks) == 4
    with duckdb.connect(str(db), read_only=True) as con:
        preds = con.execute("SELECT customer_id, as_of, churn_probability FROM churn_predictions").df()
    truth = labels.assign(as_of=labels["event_timestamp"].dt.tz_convert("UTC").dt.tz_localize(None))
    exact = preds.merge(truth[["customer_id", "as_of", "churned"]], on=["customer_id", "as_of"])
    for at, week in zip(dates, weeks[:3]):
        rows = exact[exact["as_of"] == at.tz_convert("UTC").tz_localize(None)]
        y, p = rows["churned"].to_numpy(), rows["churn_probability"].to_numpy()
        assert week.labelled == len(rows) > 100 and week.churned == int(y.sum())
        assert week.roc_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert week.pr_auc == pytest.approx(average_precision_score(y, p), abs=1e-12)
        assert week.log_loss == pytest.approx(log_loss(y, p), abs=1e-12)
        assert sum(c["rows"] for c in week.calibration) == len(rows)
    last = weeks[3]
    assert last.labelled == 0 and last.pending == last.predictions > 100 and last.roc_auc is None and last.churned == 0


def test_a_week_below_validation_warns(runs, small_repo, small_bundle):
    db, _, _, bundle = runs
    weeks = weekly(joined(db, small_repo / "data" / LABELS_FILE), bundle.threshold)
    assert below_validation(weeks, validation_auc=1.0, tolerance=0.01) == [w for w in weeks if w.roc_auc is not None]
    assert below_validation(weeks, validation_auc=0.0) == []
    prom = db.parent / "quality.prom"
    r = CliRunner().invoke(main, ["quality", "--db", str(db), "--repo", str(small_repo), "--model-dir", str(small_bundle[1]), "--tolerance", "1",
                                  "--metrics-file", str(prom)])
    assert r.exit_code == 0, r.output
    assert "pending" in r.output and len(r.output.splitlines()) == 7 and "warning" not in r.output
    gauges = prom.read_text()
    judged = [w for w in weeks if w.roc_auc is not None]
    assert f'skewless_model_live_roc_auc{{model="churn",version="{bundle.version}",week="{judged[-1].week}"}} {judged[-1].roc_auc}' in gauges
    assert f"skewless_model_predictions_pending{{model=\"churn\",version=\"{bundle.version}\"}} {float(sum(w.pending for w in weeks))}" in gauges
    none = CliRunner().invoke(main, ["quality", "--db", str(db.parent / "none.duckdb"), "--repo", str(small_repo), "--model-dir", str(small_bundle[1])])
    assert none.exit_code == 1 and "no predictions at" in none.output


def test_a_shifted_churn_mechanism_shows_as_a_decaying_model_and_the_check_warns(tmp_path, redis_endpoint):
    """The generator's --shift-after: a model trained before the shift, scored weekly after it,
    falls below its validation ROC-AUC, and `skewless quality` says so (exit 1)."""
    from datetime import datetime, timezone

    from conftest import copy_repo, feast_apply

    from skewless.store import open_store
    from synthetic.generate import GenerateConfig, generate
    from training.train import train

    end = datetime(2026, 11, 1, tzinfo=timezone.utc)
    shift = datetime(2026, 9, 1, tzinfo=timezone.utc)
    repo = copy_repo(tmp_path / "feature_repo")
    generate(GenerateConfig(customers=3_000, days=240, seed=5, end=end, events=False, shift_after=shift), repo / "data")
    assert feast_apply(repo, redis_endpoint).returncode == 0
    store = open_store(repo)
    bundle = train(store, repo, tmp_path / "models", as_of=shift).bundle  # labels known before the shift only
    labels = pd.read_parquet(repo / "data" / LABELS_FILE)
    after = [pd.Timestamp(d) for d in sorted(labels["event_timestamp"].unique()) if pd.Timestamp(d) >= shift][-2:]
    for at in after:
        run_batch(store, bundle, at.to_pydatetime(), None, tmp_path / "p.duckdb", tmp_path / "p")
    weeks = weekly(joined(tmp_path / "p.duckdb", repo / "data" / LABELS_FILE), bundle.threshold)
    validation = bundle.manifest["metrics"]["model"]["roc_auc"]
    assert len(below_validation(weeks, validation)) == len(weeks) == 2, ([w.roc_auc for w in weeks], validation)
    r = CliRunner().invoke(main, ["quality", "--db", str(tmp_path / "p.duckdb"), "--repo", str(repo), "--model-dir", str(tmp_path / "models")])
    assert r.exit_code == 1 and "below validation" in r.output
    # the scheduled pipeline's check on batch_scores warns the same way
    import dagster as dg

    from orchestration.checks import model_quality
    from orchestration.resources import SkewlessResource

    resource = SkewlessResource(repo_path=str(repo), model_dir=str(tmp_path / "models"), predictions_db=str(tmp_path / "p.duckdb"))
    result = model_quality(dg.build_asset_check_context(resources={"skewless": resource}))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN and result.metadata["below_validation"].value


def test_the_report_page_charts_quality_against_validation(runs, small_repo):
    from monitoring.report_page import _quality_section

    db, _, _, bundle = runs
    weeks = weekly(joined(db, small_repo / "data" / LABELS_FILE), bundle.threshold)
    page = "\n".join(_quality_section(weeks, bundle.manifest["metrics"]["model"]["roc_auc"]))
    assert page.count("<tr><td>") == len(weeks) == 4 and "id='quality'" in page and "data:image/png;base64," in page
