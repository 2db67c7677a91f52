"""`skewless skew-report`: replay served requests through point-in-time retrieval; report skew and drift.

Writes one self-contained HTML page and the PSI chart as PNG (monitoring/report_page.py),
prints the same tables, and exits 1 when a threshold is passed so a scheduler can alert.
"""

from __future__ import annotations

from pathlib import Path

import click

from skewless.paths import DATA_DIR, FEATURE_LOG_DIR, PREDICTIONS_DB, REPO_DIR

REPORT_HTML = DATA_DIR / "skew_report.html"


@click.command("skew-report")
@click.option("--since", default=None, help="Only requests at or after this time (ISO 8601).")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=FEATURE_LOG_DIR, show_default=True, help="Feature logs.")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=PREDICTIONS_DB, show_default=True, help="Batch predictions.")
@click.option("--model", "version", default="latest", show_default=True)
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where bundles are (default: models/, or SKEWLESS_MODEL_DIR).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
@click.option("--max-mismatch", type=float, default=0.0, show_default=True, help="Alert when a feature's mismatch share is above this.")
@click.option("--max-psi", type=float, default=0.25, show_default=True, help="Alert when a PSI is above this.")
@click.option("--min-customers", type=int, default=100, show_default=True, help="Served customers needed before the served features' drift is computed.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=REPORT_HTML, show_default=True, help="The report page.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None, help="PNG chart path (default: beside the page, .png).")
def skew_report_command(since, log_dir, db_path, version, model_dir, repo, max_mismatch, max_psi, min_customers, html_path, chart) -> None:
    """Replay served requests through point-in-time retrieval; report skew and drift (HTML + PNG)."""
    from skewless.times import parse_time

    when = parse_time(since) if since else None

    from monitoring.report_page import write_report
    from monitoring.skew_report import build_report, format_drift, format_skew
    from skewless.bundle import DEFAULT_MODEL_DIR, BundleError, load_bundle
    from skewless.store import open_store

    store = open_store(repo)
    try:
        bundle = load_bundle(version, model_dir or DEFAULT_MODEL_DIR, store=store)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    report = build_report(store, bundle, log_dir, db_path, when, min_customers)
    click.echo(f"skew report for {report.model} ({report.feature_service}): {report.requests:,} logged rows "
               f"({report.customers:,} customers) replayed at their request times")
    click.echo(f"  {report.rows_differing:,} of {report.requests:,} served rows differ from point-in-time truth "
               f"({report.values_differing:,} of {report.values_compared:,} values)")
    click.echo(format_skew(report.skews))
    click.echo("")
    if report.drift_note:
        click.echo(report.drift_note)
    click.echo(format_drift(report.drift, max_psi))
    page, png = write_report(report, bundle, max_mismatch, max_psi, html_path, chart or html_path.with_suffix(".png"),
                             _quality_weeks(db_path, Path(repo), bundle))
    click.echo(f"report: {page} (chart {png}); open it with: python3 -m webbrowser {page.resolve().as_uri()}")
    skewed = [s.feature for s in report.skews if s.share > max_mismatch]
    drifted = report.drift.loc[report.drift["psi"] > max_psi, "name"].tolist()
    if skewed or drifted:
        parts = ([f"skew in {', '.join(skewed)}"] if skewed else []) + ([f"drift in {', '.join(drifted)}"] if drifted else [])
        raise click.ClickException("; ".join(parts))


def _quality_weeks(db_path: Path, repo: Path, bundle) -> list | None:
    """The model's weekly quality for the report page (monitoring/quality.py); None without runs or labels."""
    from monitoring.quality import joined, weekly
    from skewless.labels import LABELS_FILE

    labels = repo / "data" / LABELS_FILE
    if not Path(db_path).is_file() or not labels.is_file():
        return None
    return weekly(joined(db_path, labels), bundle.threshold) or None


@click.command("quality")
@click.option("--since", default=None, help="Only predictions as of this time or later (ISO 8601).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=PREDICTIONS_DB, show_default=True, help="Batch predictions.")
@click.option("--model", "version", default="latest", show_default=True, help="The bundle whose validation figures and threshold to compare with.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where bundles are (default: models/, or SKEWLESS_MODEL_DIR).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True, help="The Feast repository (its data/ holds the labels).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.05, show_default=True, help="Warn (exit 1) when a week's ROC-AUC is below validation by more than this.")
@click.option("--metrics-file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the figures as Prometheus gauges here (node_exporter's textfile collector).")
def quality_command(since, db_path, version, model_dir, repo, tolerance, metrics_file) -> None:
    """The model's real quality per week, as labels arrive: batch predictions against outcomes.

    \b
    skewless quality
    skewless quality --since 2026-09-01
    skewless quality --metrics-file /var/lib/node_exporter/textfile/skewless_quality.prom
    """
    from skewless.labels import LABELS_FILE
    from skewless.times import parse_time

    when = parse_time(since) if since else None  # a bad --since is one line before anything heavy is imported
    from monitoring.quality import below_validation, joined, weekly, write_metrics
    from skewless.bundle import DEFAULT_MODEL_DIR, BundleError, load_bundle

    labels = Path(repo) / "data" / LABELS_FILE
    if not labels.is_file():
        raise click.ClickException(f"no labels at {labels}: `skewless generate` writes them (a deployment writes the same file)")
    if not Path(db_path).is_file():
        raise click.ClickException(f"no predictions at {db_path}: run `skewless score --as-of T` first")
    try:
        bundle = load_bundle(version, model_dir or DEFAULT_MODEL_DIR)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    validation = bundle.manifest["metrics"]["model"]
    weeks = weekly(joined(db_path, labels, when), bundle.threshold)
    if not weeks:
        raise click.ClickException(f"no full batch runs in {db_path}" + (f" since {when.isoformat()}" if when else ""))
    click.echo(f"model {bundle.name}/{bundle.version}: validation ROC-AUC {validation['roc_auc']:.3f}, PR-AUC {validation['pr_auc']:.3f}, "
               f"log loss {validation['log_loss']:.3f}; threshold {bundle.threshold:.3f}")
    click.echo(f"{'week':9} {'predicted':>9} {'labelled':>8} {'pending':>7} {'churned':>7} {'ROC-AUC':>7} {'PR-AUC':>6} {'logloss':>7} {'prec':>5} {'recall':>6}")

    def f(v, w=7):
        return f"{'-':>{w}}" if v is None else f"{v:>{w}.3f}"

    for w in weeks:
        click.echo(f"{w.week:9} {w.predictions:>9,} {w.labelled:>8,} {w.pending:>7,} {w.churned:>7,} {f(w.roc_auc)} {f(w.pr_auc, 6)} "
                   f"{f(w.log_loss)} {f(w.precision, 5)} {f(w.recall, 6)}")
    if metrics_file is not None:
        write_metrics(metrics_file, weeks, bundle.name, bundle.version, validation["roc_auc"])
        click.echo(f"gauges: {metrics_file}")
    low = below_validation(weeks, validation["roc_auc"], tolerance)
    for w in low:
        click.echo(f"warning: {w.week}: ROC-AUC {w.roc_auc:.3f} is below validation {validation['roc_auc']:.3f} by more than {tolerance}", err=True)
    if low:
        raise SystemExit(1)
