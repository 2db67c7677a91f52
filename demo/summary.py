"""`skewless demo-summary`: the last thing `make demo` prints: what ran, where it went, whether it holds.

Read back from what the steps wrote (the bundle, the runs table, the demo's and the report's
JSON), so it says what is on disk, not what a step meant to do. Every command it suggests
works when pasted (tests/test_commands.py runs them).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click

from skewless.paths import DATA_DIR, PREDICTIONS_DB, PREDICTIONS_DIR, REPO_DIR

REPORT = DATA_DIR / "skew_report.html"


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _why(run_id: str) -> list[str]:
    """The riskiest explained customer of the run and their top reasons (table churn_reasons)."""
    import duckdb

    from batch.outputs import REASONS_TABLE, TABLE, connect_db

    con = connect_db(PREDICTIONS_DB, read_only=True)
    try:
        rows = con.execute(
            f"SELECT r.customer_id, p.churn_probability, p.risk_segment, r.feature, r.value, r.contribution, r.direction "
            f"FROM {REASONS_TABLE} r JOIN {TABLE} p USING (customer_id, run_id) WHERE r.run_id = ? "
            f"AND r.customer_id = (SELECT customer_id FROM {TABLE} WHERE run_id = ? AND customer_id IN "
            f"(SELECT customer_id FROM {REASONS_TABLE} WHERE run_id = ?) ORDER BY churn_probability DESC, customer_id LIMIT 1) ORDER BY r.rank",
            [run_id, run_id, run_id]).fetchall()
    except duckdb.CatalogException:
        return []  # a database from before explanations
    finally:
        con.close()
    if not rows:
        return []
    cid, p, segment = rows[0][:3]
    reasons = "; ".join(f"{feature} = {_shown(value)} ({direction} {contribution:+.2f})" for _, _, _, feature, value, contribution, direction in rows)
    return [f"  why      customer {cid} ({segment}, {p:.3f}): {reasons}",
            f"           .venv/bin/skewless explain --customer {cid}    (its reasons now, from the offline store)"]


def _shown(value: str | None) -> str:
    """A reason's value as text, numbers to 4 significant digits."""
    if value is None:
        return "missing"
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


@click.command("demo-summary")
@click.option("--started", default=None, help="When the demo started (ISO 8601), for its wall time.")
def demo_summary(started: str | None) -> None:
    """Summarize the demo: what ran, where the outputs are, the skew result, what to try next."""
    from batch.status import latest_runs
    from demo.online import RESULT
    from skewless.bundle import DEFAULT_MODEL_DIR, BundleError, load_bundle
    from skewless.times import parse_time

    try:
        bundle = load_bundle("latest", DEFAULT_MODEL_DIR)
    except BundleError as exc:
        raise click.ClickException(f"nothing to summarize: {exc}; `make demo` runs every step, then this") from None
    for step, path in (("the online demo", RESULT), ("the skew report", REPORT.with_suffix(".json"))):
        if not path.is_file():
            raise click.ClickException(f"nothing to summarize: {step} has not run ({_rel(path)} is missing); `make demo` runs every step")
    runs = latest_runs(PREDICTIONS_DB)
    online = json.loads(RESULT.read_text())
    report = json.loads(REPORT.with_suffix(".json").read_text())
    ok = not report["skewed_features"] and not report["drifted"]
    took = ""
    if started:
        seconds = (datetime.now(timezone.utc) - parse_time(started)).total_seconds()
        took = f" in {seconds // 60:.0f} min {seconds % 60:.0f} s"
    m = bundle.manifest["metrics"]
    color = "green" if ok else "red"
    lines = [
        f"demo {'finished' if ok else 'finished with an alert'}{took}: generate, apply, train, batch score, materialize + serve, skew report",
        f"  data     {_rel(REPO_DIR / 'data')}/ (profiles, activity, labels), registered in {_rel(REPO_DIR / 'data' / 'registry.db')}",
        f"  model    {bundle.name}/{bundle.version} on {bundle.feature_service}: ROC-AUC {m['model']['roc_auc']:.3f} "
        f"(baseline {m['baseline_logistic']['roc_auc']:.3f}, ceiling {m['ceiling_true_hazard']['roc_auc']:.3f}) in {_rel(bundle.path)}",
    ]
    if not runs.empty:
        r = runs.iloc[0]
        lines.append(f"  batch    {int(r['rows']):,} customers scored as of {r['as_of']:%Y-%m-%d %H:%M} UTC into {_rel(PREDICTIONS_DB)} "
                     f"(table churn_predictions) and {_rel(PREDICTIONS_DIR)}/")
        lines += _why(r["run_id"])
    lines += [
        f"  online   {online['predictions']:,} predictions served from Redis ({online['materialized_rows']:,} rows materialized)",
        *([f"  scores   /scores/{s['customer_id']} served probability {s['churn_probability']:.4f} ({s['risk_segment']}) of run {s['run_id']}, "
           f"{s['age_seconds']:.0f}s old: the batch row, by ID, no model call"] if (s := online.get("stored_score") or {}).get("status") == "ok" else []),
        f"  skew     {report['rows_differing']:,} of {report['requests']:,} served rows differ from point-in-time truth"
        + (f"; skew in {', '.join(report['skewed_features'])}" if report["skewed_features"] else "")
        + (f"; drift in {', '.join(report['drifted'])}" if report["drifted"] else f"; no drift past PSI {report['max_psi']:g}"),
        *([f"  stream   customer {e['customer_id']}'s failed payment: score {e['before']:.3f} ({e['before_segment']}) -> {e['after']:.3f} "
           f"({e['after_segment']}), published {e['ms']:.0f} ms after the event"] if (e := online.get("live_event")) else []),
        f"  report   python3 -m webbrowser {REPORT.resolve().as_uri()}",
        "  next     .venv/bin/skewless score top -n 10          (the churn list, from DuckDB)",
        "           .venv/bin/skewless serve                      (the service on :8000, its own Redis; then the curl lines above)",
        "           make scheduler                                (the scheduled pipeline on Dagster: http://127.0.0.1:3000)",
    ]
    for line in lines:
        click.secho(line, fg=color)
