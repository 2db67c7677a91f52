"""`skewless skew-report`: check served features against the offline truth, and drift.

Two questions an operator asks on live data:

1. **Skew.** Would training have seen the same features? Every logged request is replayed
   through point-in-time retrieval (`get_historical_features` at its request time, the training
   path) and compared feature by feature: exact for integers and strings, within 1e-9 for
   floats, null where null. The report gives, per feature, the share that differ and an example.
2. **Drift.** Do the served features and the latest batch scores still look like the training
   set? Population stability index (PSI) per feature against the bundle's own training set,
   as a table and a PNG chart.

The command exits non-zero when a mismatch share or a PSI passes its threshold, so a scheduler
can alert on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click
import numpy as np
import pandas as pd

from training.bundle import Bundle, FeatureSpec

FLOAT_TOLERANCE = 1e-9
PSI_BINS = 10


@dataclass
class FeatureSkew:
    feature: str
    compared: int
    differing: int
    example: str | None

    @property
    def share(self) -> float:
        return self.differing / self.compared if self.compared else 0.0


def values_equal(spec: FeatureSpec, served: pd.Series, offline: pd.Series) -> np.ndarray:
    """Element-wise equality with the parity rules: null == null, floats within 1e-9."""
    s_null, o_null = served.isna().to_numpy(), offline.isna().to_numpy()
    both = ~s_null & ~o_null
    equal = s_null & o_null
    if spec.is_categorical:
        equal[both] = served[both].astype(str).to_numpy() == offline[both].astype(str).to_numpy()
    else:
        a = served[both].astype("float64").to_numpy()
        b = offline[both].astype("float64").to_numpy()
        equal[both] = np.abs(a - b) <= FLOAT_TOLERANCE * np.maximum(1.0, np.abs(b))
    return equal


def compare_features(bundle: Bundle, served: pd.DataFrame, offline: pd.DataFrame, keys: list[str]) -> list[FeatureSkew]:
    """Per-feature mismatch between served rows and their offline recomputation (joined on keys)."""
    joined = served.merge(offline, on=keys, how="inner", suffixes=("__served", "__offline"), validate="1:1")
    out = []
    for spec in bundle.features:
        s, o = joined[f"{spec.name}__served"], joined[f"{spec.name}__offline"]
        equal = values_equal(spec, s, o)
        example = None
        if not equal.all():
            i = int(np.flatnonzero(~equal)[0])
            row = joined.iloc[i]
            example = f"customer {row[keys[0]]} at {row[keys[1]]}: served {s.iloc[i]!r}, offline {o.iloc[i]!r}"
        out.append(FeatureSkew(spec.name, len(joined), int((~equal).sum()), example))
    return out


def psi(expected: pd.Series, actual: pd.Series, categorical: bool) -> float:
    """Population stability index of `actual` against `expected`; nulls are a bin of their own.

    Numeric bins are the deciles of the expected (training) distribution; a small floor on
    each share keeps empty bins finite, as is usual for PSI.
    """
    if categorical:
        e = expected.astype("object").where(expected.notna(), "<null>")
        a = actual.astype("object").where(actual.notna(), "<null>")
        cats = sorted(set(e.unique()) | set(a.unique()), key=str)
        e_share = e.value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy()
        a_share = a.value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy()
    else:
        e = pd.to_numeric(expected, errors="coerce").astype("float64")
        a = pd.to_numeric(actual, errors="coerce").astype("float64")
        edges = np.unique(np.nanquantile(e.dropna(), np.linspace(0, 1, PSI_BINS + 1))) if e.notna().any() else np.array([])
        inner = edges[1:-1]

        def shares(x: pd.Series) -> np.ndarray:
            v = x.to_numpy()
            idx = np.where(np.isnan(v), len(inner) + 1, np.searchsorted(inner, v, side="right"))
            return np.bincount(idx.astype(int), minlength=len(inner) + 2) / max(len(v), 1)

        e_share, a_share = shares(e), shares(a)
    e_share = np.maximum(e_share, 1e-4)
    a_share = np.maximum(a_share, 1e-4)
    return float(np.sum((a_share - e_share) * np.log(a_share / e_share)))


def drift_table(bundle: Bundle, training: pd.DataFrame, served: pd.DataFrame | None, batch_scores: pd.Series | None, training_scores: pd.Series | None) -> pd.DataFrame:
    """PSI per feature (served vs training) and of the batch score distribution (vs training)."""
    rows = []
    if served is not None and len(served):
        for spec in bundle.features:
            rows.append({"what": "served feature", "name": spec.name, "psi": psi(training[spec.name], served[spec.name], spec.is_categorical)})
    if batch_scores is not None and training_scores is not None and len(batch_scores):
        rows.append({"what": "batch score", "name": "churn_probability", "psi": psi(training_scores, batch_scores, False)})
    return pd.DataFrame(rows, columns=["what", "name", "psi"])


def psi_chart(table: pd.DataFrame, threshold: float, path: Path) -> Path:
    """A horizontal bar chart of PSI per feature with the alert threshold, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.sort_values("psi")
    fig, ax = plt.subplots(figsize=(8, 0.32 * max(len(t), 4) + 1.2))
    colors = ["#d62728" if v > threshold else "#1f77b4" for v in t["psi"]]
    ax.barh([f"{n} ({w})" for n, w in zip(t["name"], t["what"])], t["psi"], color=colors)
    ax.axvline(threshold, color="#d62728", linestyle="--", label=f"alert at PSI {threshold}")
    ax.set_xlabel("population stability index vs training set")
    ax.set_title("skewless drift report")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_skew(skews: list[FeatureSkew]) -> str:
    lines = [f"{'feature':26}{'compared':>10}{'differ':>8}{'share':>8}  example"]
    for s in skews:
        lines.append(f"{s.feature:26}{s.compared:>10}{s.differing:>8}{s.share:>8.2%}  {s.example or ''}")
    return "\n".join(lines)


def format_drift(table: pd.DataFrame, threshold: float) -> str:
    lines = [f"{'what':16}{'name':26}{'psi':>8}"]
    for r in table.itertuples():
        flag = "  ALERT" if r.psi > threshold else ""
        lines.append(f"{r.what:16}{r.name:26}{r.psi:>8.3f}{flag}")
    return "\n".join(lines)


def since_filter(frame: pd.DataFrame, column: str, since: datetime | None) -> pd.DataFrame:
    return frame if since is None else frame[frame[column] >= pd.Timestamp(since)]


def build_report(store, bundle: Bundle, log_dir: Path, db_path: Path | None, since: datetime | None) -> dict:
    """Skew of logged requests against point-in-time retrieval, and drift against training."""
    from monitoring.feature_log import read_log
    from training.dataset import KEYS, historical_features
    from training.score import score

    table = read_log(log_dir)
    if table is None:
        raise ValueError(f"no feature logs in {log_dir}: serve some requests first (skewless serve)")
    served = since_filter(table.to_pandas(), "request_time", since)
    served = served[served["model_version"] == bundle.version]
    if served.empty:
        raise ValueError(f"no logged requests for model {bundle.version} since {since.isoformat() if since else 'the start'} in {log_dir}")
    served = served.drop_duplicates(["customer_id", "request_time"])
    keys = served.rename(columns={"request_time": "event_timestamp"})[KEYS]
    offline = historical_features(store, bundle.feature_service, keys)
    skews = compare_features(bundle, served.rename(columns={"request_time": "event_timestamp"}), offline, KEYS)

    training = pd.read_parquet(bundle.path / "training_set.parquet")
    batch_scores = None
    if db_path is not None and Path(db_path).exists():
        import duckdb

        with duckdb.connect(str(db_path), read_only=True) as con:
            batch_scores = con.execute(
                "SELECT churn_probability FROM churn_predictions WHERE model_version = ? AND as_of = "
                "(SELECT max(as_of) FROM churn_predictions WHERE model_version = ?)", [bundle.version, bundle.version]
            ).df()["churn_probability"]
    training_scores = pd.Series(score(bundle, training).probability)
    # drift compares populations: one row per customer (its latest request), not per request
    population = served.sort_values("request_time").drop_duplicates("customer_id", keep="last")
    drift = drift_table(bundle, training, population, batch_scores, training_scores)
    return {"requests": len(served), "skews": skews, "drift": drift}


@click.command("skew-report")
@click.option("--since", default=None, help="Only requests at or after this time (ISO 8601).")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Feature logs (default: data/feature_log).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Batch predictions (default: data/predictions.duckdb).")
@click.option("--model", "version", default="latest", show_default=True)
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--max-mismatch", type=float, default=0.0, show_default=True, help="Alert when a feature's mismatch share is above this.")
@click.option("--max-psi", type=float, default=0.25, show_default=True, help="Alert when a PSI is above this.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None, help="PNG chart path (default: data/skew_report.png).")
def skew_report_command(since, log_dir, db_path, version, model_dir, repo, max_mismatch, max_psi, chart) -> None:
    """Replay served requests through point-in-time retrieval; report skew and drift."""
    from batch.job import DEFAULT_DB
    from serving.settings import PROJECT_DIR, Settings
    from training.bundle import DEFAULT_MODEL_DIR, BundleError, load_bundle
    from training.times import parse_time
    from training.store import REPO_DIR, open_store

    store = open_store(repo or REPO_DIR)
    try:
        bundle = load_bundle(version, model_dir or DEFAULT_MODEL_DIR, store=store)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    report = build_report(store, bundle, log_dir or Settings().feature_log_dir, db_path or DEFAULT_DB, parse_time(since) if since else None)
    click.echo(f"skew report for {bundle.name}/{bundle.version}: {report['requests']:,} logged requests replayed at their request times")
    click.echo(format_skew(report["skews"]))
    click.echo("")
    click.echo(format_drift(report["drift"], max_psi))
    png = psi_chart(report["drift"], max_psi, chart or PROJECT_DIR / "data" / "skew_report.png")
    click.echo(f"chart: {png}")
    skewed = [s.feature for s in report["skews"] if s.share > max_mismatch]
    drifted = report["drift"].loc[report["drift"]["psi"] > max_psi, "name"].tolist()
    if skewed or drifted:
        parts = ([f"skew in {', '.join(skewed)}"] if skewed else []) + ([f"drift in {', '.join(drifted)}"] if drifted else [])
        raise click.ClickException("; ".join(parts))
