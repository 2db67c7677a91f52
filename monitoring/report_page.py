"""The skew report as one self-contained HTML page (charts inlined as PNG), plus the PSI chart as a PNG file.

Readable in any browser with no server and nothing fetched: the page carries its styles and
its images. Order: the verdict, what was compared (model, feature service, window, counts),
the skew table (the project's promise: served features equal point-in-time truth), then drift
(PSI per feature, with the training and served distributions side by side for every feature
past the threshold), then the batch scores against the training set's scores.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.skew_report import Report, binned_shares

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 64rem; color: #222; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.verdict { padding: .8rem 1rem; border-radius: .4rem; font-size: 1.1rem; }
.ok { background: #e6f4ea; border: 1px solid #34a853; } .alert { background: #fce8e6; border: 1px solid #d93025; }
table { border-collapse: collapse; margin: .5rem 0; } th, td { padding: .25rem .6rem; text-align: left; }
th { background: #f1f3f4; } tr:nth-child(even) td { background: #fafafa; } td.num { text-align: right; }
td.bad { color: #d93025; font-weight: 600; } img { max-width: 100%; } .muted { color: #666; }
"""


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def psi_chart(table: pd.DataFrame, threshold: float) -> bytes:
    """A horizontal bar chart of PSI per feature and of the batch scores, with the alert threshold."""
    plt = _pyplot()
    t = table.sort_values("psi")
    fig, ax = plt.subplots(figsize=(8, 0.32 * max(len(t), 4) + 1.2))
    colors = ["#d62728" if v > threshold else "#1f77b4" for v in t["psi"]]
    ax.barh([f"{n} ({w})" for n, w in zip(t["name"], t["what"])], t["psi"], color=colors)
    ax.axvline(threshold, color="#d62728", linestyle="--", label=f"alert at PSI {threshold}")
    ax.set_xlabel("population stability index vs the training set")
    ax.set_title("drift: PSI per feature (served) and of the batch scores")
    ax.legend(loc="lower right")
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def quality_chart(weeks, validation_auc: float) -> bytes:
    """Live ROC-AUC per week (monitoring/quality.py) against the bundle's validation ROC-AUC."""
    plt = _pyplot()
    judged = [w for w in weeks if w.roc_auc is not None]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot([w.week for w in judged], [w.roc_auc for w in judged], marker="o", label="live ROC-AUC (labelled predictions)")
    ax.axhline(validation_auc, color="#2ca02c", linestyle="--", label=f"validation {validation_auc:.3f}")
    pending = [w.week for w in weeks if w.roc_auc is None]
    ax.set_title("model quality as labels arrive" + (f" ({len(pending)} week(s) pending)" if pending else ""))
    ax.set_ylabel("ROC-AUC")
    ax.legend(loc="lower left")
    fig.autofmt_xdate()
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def _quality_section(weeks, validation_auc: float) -> list[str]:
    parts = ["<h2>Model quality as labels arrive</h2>",
             "<p>Each full batch run's predictions against the churn labels that arrived since (30 days after the "
             "prediction), per week of the run's as-of time; <i>pending</i>: the outcome is not known yet.</p>",
             "<table id='quality'><tr><th>week</th><th>predictions</th><th>labelled</th><th>pending</th><th>ROC-AUC</th>"
             "<th>PR-AUC</th><th>log loss</th><th>precision</th><th>recall</th></tr>"]

    def cell(v):
        return "<td class='num'>-</td>" if v is None else f"<td class='num'>{v:.3f}</td>"

    for w in weeks:
        parts.append(f"<tr><td>{html.escape(w.week)}</td><td class='num'>{w.predictions:,}</td><td class='num'>{w.labelled:,}</td>"
                     f"<td class='num'>{w.pending:,}</td>{cell(w.roc_auc)}{cell(w.pr_auc)}{cell(w.log_loss)}{cell(w.precision)}{cell(w.recall)}</tr>")
    parts.append("</table>")
    parts.append(_img(quality_chart(weeks, validation_auc), "ROC-AUC per week against validation"))
    return parts


def distribution_chart(name: str, training: pd.Series, served: pd.Series, categorical: bool, served_label: str = "served") -> bytes:
    """Shares per bin, training beside served: the bins PSI compares (training deciles, or categories)."""
    plt = _pyplot()
    labels, e_share, a_share = binned_shares(training, served, categorical)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(x - 0.2, e_share, width=0.4, label="training set", color="#9aa0a6")
    ax.bar(x + 0.2, a_share, width=0.4, label=served_label, color="#1a73e8")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share of rows")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def _fmt_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _label_window(bundle) -> str:
    labels = bundle.manifest.get("training_window", {}).get("train_labels")
    return f", labels {labels[0][:10]} .. {labels[1][:10]}" if labels else ""


def render(report: Report, bundle, max_mismatch: float, max_psi: float, psi_png: bytes, quality: list | None = None) -> str:
    """The whole page as a string (`quality`: monitoring/quality.py's weeks, when there are runs to judge)."""
    e = html.escape
    skewed = [s for s in report.skews if s.share > max_mismatch]
    drifted = report.drift[report.drift["psi"] > max_psi]
    ok = not skewed and drifted.empty
    verdict = (
        f"<b>No skew</b>: {report.rows_differing:,} of {report.requests:,} served rows differ from point-in-time truth "
        f"({report.values_differing:,} of {report.values_compared:,} values)."
        if not skewed else
        f"<b>Skew in {len(skewed)} feature(s)</b>: {report.rows_differing:,} of {report.requests:,} served rows differ from point-in-time truth."
    )
    verdict += " No drift past PSI {:g}.".format(max_psi) if drifted.empty else f" <b>Drift</b> in {', '.join(e(n) for n in drifted['name'])} (PSI over {max_psi:g})."
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>skewless skew report: {e(report.model)}</title><style>{STYLE}</style></head><body>",
        f"<h1>skewless skew report</h1><p class='muted'>generated {_fmt_time(datetime.now(timezone.utc))}</p>",
        f"<p class='verdict {'ok' if ok else 'alert'}'>{verdict}</p>",
        "<table>",
        f"<tr><th>model</th><td>{e(report.model)}</td></tr>",
        f"<tr><th>feature service</th><td>{e(report.feature_service)} ({len(bundle.features)} features)</td></tr>",
        f"<tr><th>window</th><td>{_fmt_time(report.window[0])} .. {_fmt_time(report.window[1])}</td></tr>",
        f"<tr><th>requests replayed</th><td>{report.requests:,} logged rows, {report.customers:,} customers</td></tr>",
        f"<tr><th>training set</th><td>{len(report.training):,} rows{_label_window(bundle)}</td></tr>",
        f"<tr><th>thresholds</th><td>mismatch share over {max_mismatch:g}; PSI over {max_psi:g}</td></tr>",
        "</table>",
        "<h2>Skew: served features against point-in-time retrieval</h2>",
        "<p>Each logged request replayed through <code>get_historical_features</code> at its request time (the training path); "
        "integers and strings exact, floats within 1e-9, null where null.</p>",
        "<table id='skew'><tr><th>feature</th><th>compared</th><th>differ</th><th>share</th><th>example</th></tr>",
    ]
    for s in report.skews:
        bad = " class='num bad'" if s.share > max_mismatch else " class='num'"
        parts.append(f"<tr><td>{e(s.feature)}</td><td class='num'>{s.compared:,}</td><td{bad}>{s.differing:,}</td>"
                     f"<td{bad}>{s.share:.2%}</td><td>{e(s.example or '')}</td></tr>")
    parts += [
        "</table>",
        "<h2>Drift: PSI against the training set</h2>",
        "<p>Served features: one row per customer (its latest request) against the bundle's training set; "
        "bins are the training set's deciles (categories for strings), missing values a bin of their own.</p>",
        *([f"<p><b>{e(report.drift_note)}.</b></p>"] if report.drift_note else []),
        "<table id='drift'><tr><th>what</th><th>name</th><th>PSI</th></tr>",
    ]
    for r in report.drift.itertuples():
        bad = " class='num bad'" if r.psi > max_psi else " class='num'"
        parts.append(f"<tr><td>{e(r.what)}</td><td>{e(r.name)}</td><td{bad}>{r.psi:.3f}</td></tr>")
    parts += ["</table>", _img(psi_png, "PSI per feature")]
    specs = {f.name: f for f in bundle.features}
    alerting = [n for n in drifted["name"] if n in specs]
    if alerting:
        parts.append("<h3>Features past the threshold: training beside served</h3>")
        for name in alerting:
            chart = distribution_chart(name, report.training[name], report.population[name], specs[name].is_categorical)
            parts.append(_img(chart, f"distribution of {name}"))
    else:
        parts.append("<p>No served feature passes the PSI threshold.</p>")
    parts.append("<h2>Batch scores</h2>")
    if report.batch_run is not None and report.batch_scores is not None:
        run = report.batch_run
        parts.append(f"<p>The newest full batch run of this model, run {e(str(run['run_id']))} as of {_fmt_time(run['as_of'])} "
                     f"({run['rows']:,} customers), against the model's scores of its own training set.</p>")
        chart = distribution_chart("churn_probability", report.training_scores, report.batch_scores, False, served_label=f"batch run {run['run_id']}")
        parts.append(_img(chart, "batch scores against training-set scores"))
    else:
        parts.append("<p>No full batch run of this model in the predictions database.</p>")
    if quality:
        parts += _quality_section(quality, bundle.manifest["metrics"]["model"]["roc_auc"])
    # marks how many images the browser decoded (the page reads the same without scripts)
    parts.append("<script>addEventListener('load', () => { const i = [...document.images]; "
                 "document.body.dataset.imagesRendered = i.filter(x => x.complete && x.naturalWidth > 0).length + '/' + i.length; });</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def summary(report: Report, max_mismatch: float, max_psi: float) -> dict:
    """The report's numbers as JSON (beside the page, for schedulers and `skewless demo-summary`)."""
    return {
        "model": report.model, "feature_service": report.feature_service,
        "window": [t.isoformat() for t in report.window], "requests": report.requests, "customers": report.customers,
        "rows_differing": report.rows_differing, "values_compared": report.values_compared, "values_differing": report.values_differing,
        "skewed_features": [s.feature for s in report.skews if s.share > max_mismatch],
        "drifted": report.drift.loc[report.drift["psi"] > max_psi, "name"].tolist(),
        "max_mismatch": max_mismatch, "max_psi": max_psi,
    }


def write_report(report: Report, bundle, max_mismatch: float, max_psi: float, html_path: Path, png_path: Path,
                 quality: list | None = None) -> tuple[Path, Path]:
    """Write the page, the PSI chart and the JSON summary, each to a temporary file renamed into place."""
    import json

    psi_png = psi_chart(report.drift, max_psi)
    page = render(report, bundle, max_mismatch, max_psi, psi_png, quality)
    numbers = json.dumps(summary(report, max_mismatch, max_psi), indent=2).encode()
    for path, data in ((png_path, psi_png), (html_path, page.encode()), (html_path.with_suffix(".json"), numbers)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return html_path, png_path
