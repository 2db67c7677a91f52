"""Served features against the offline truth (skew) and against the training set (drift).

Two questions an operator asks on live data:

1. **Skew.** Would training have seen the same features? Every logged request is replayed
   through point-in-time retrieval (`get_historical_features` at its request time, the training
   path) and compared feature by feature: exact for integers and strings, within 1e-9 for
   floats, null where null. The report gives, per feature, the share that differ and an example.
2. **Drift.** Do the served features and the latest batch scores still look like the training
   set? Population stability index (PSI) per feature against the bundle's own training set.

`build_report` computes both; monitoring/report_page.py renders them as one HTML page (and a
PNG), monitoring/cli.py is the `skewless skew-report` command, which exits non-zero when a
mismatch share or a PSI passes its threshold, so a scheduler can alert on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from skewless.bundle import Bundle, FeatureSpec

FLOAT_TOLERANCE = 1e-9
PSI_BINS = 10
MIN_CUSTOMERS = 100  # PSI over fewer served customers says more about the sample than about drift


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


def compare_features(bundle: Bundle, served: pd.DataFrame, offline: pd.DataFrame, keys: list[str]) -> tuple[list[FeatureSkew], int]:
    """Per-feature mismatch between served rows and their offline recomputation (joined on keys),
    and how many rows differ in at least one feature."""
    joined = served.merge(offline, on=keys, how="inner", suffixes=("__served", "__offline"), validate="1:1")
    out = []
    row_differs = np.zeros(len(joined), dtype=bool)
    for spec in bundle.features:
        s, o = joined[f"{spec.name}__served"], joined[f"{spec.name}__offline"]
        equal = values_equal(spec, s, o)
        row_differs |= ~equal
        example = None
        if not equal.all():
            i = int(np.flatnonzero(~equal)[0])
            row = joined.iloc[i]
            example = f"customer {row[keys[0]]} at {row[keys[1]]}: served {_plain(s.iloc[i])!r}, offline {_plain(o.iloc[i])!r}"
        out.append(FeatureSkew(spec.name, len(joined), int((~equal).sum()), example))
    return out, int(row_differs.sum())


def _plain(value):
    """A value as a person reads it: 26.17, not np.float64(26.17); None for any missing value."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def binned_shares(expected: pd.Series, actual: pd.Series, categorical: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(bin labels, share of `expected` per bin, share of `actual` per bin): the bins PSI compares.

    Numeric bins are the deciles of the expected (training) distribution, categories for strings;
    missing values are a bin of their own (the last).
    """
    if categorical:
        e = expected.astype("object").where(expected.notna(), "<missing>")
        a = actual.astype("object").where(actual.notna(), "<missing>")
        labels = sorted(set(e.unique()) | set(a.unique()), key=str)
        e_share = e.value_counts(normalize=True).reindex(labels, fill_value=0).to_numpy()
        a_share = a.value_counts(normalize=True).reindex(labels, fill_value=0).to_numpy()
        return [str(v) for v in labels], e_share, a_share
    e = pd.to_numeric(expected, errors="coerce").astype("float64")
    a = pd.to_numeric(actual, errors="coerce").astype("float64")
    edges = np.unique(np.nanquantile(e.dropna(), np.linspace(0, 1, PSI_BINS + 1))) if e.notna().any() else np.array([])
    inner = edges[1:-1]

    def shares(x: pd.Series) -> np.ndarray:
        v = x.to_numpy()
        idx = np.where(np.isnan(v), len(inner) + 1, np.searchsorted(inner, v, side="right"))
        return np.bincount(idx.astype(int), minlength=len(inner) + 2) / max(len(v), 1)

    if len(inner):
        labels = [f"<{inner[0]:.3g}"] + [f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(inner[:-1], inner[1:])] + [f">={inner[-1]:.3g}"]
    else:
        labels = ["all"]
    return labels + ["missing"], shares(e), shares(a)


def psi(expected: pd.Series, actual: pd.Series, categorical: bool) -> float:
    """Population stability index of `actual` against `expected` over `binned_shares`'s bins;
    a small floor on each share keeps empty bins finite, as is usual for PSI."""
    _, e_share, a_share = binned_shares(expected, actual, categorical)
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


@dataclass
class Report:
    """What `build_report` found, for the terminal, the HTML page and the exit code."""

    model: str  # name/version
    feature_service: str
    window: tuple[datetime, datetime]  # first and last logged request replayed
    requests: int  # logged rows (one per customer per request) replayed
    customers: int
    rows_differing: int  # logged rows with at least one feature that differs from the replay
    skews: list[FeatureSkew]
    drift: pd.DataFrame  # what, name, psi
    training: pd.DataFrame  # the bundle's training set (features)
    population: pd.DataFrame  # served features, one row per customer (its latest request)
    batch_run: dict | None  # {"run_id", "as_of", "rows"} of the newest full batch run of this model, if any
    batch_scores: pd.Series | None
    training_scores: pd.Series
    drift_note: str | None = None  # why the served features' drift was not computed, if it was not

    @property
    def values_compared(self) -> int:
        return sum(s.compared for s in self.skews)

    @property
    def values_differing(self) -> int:
        return sum(s.differing for s in self.skews)


def build_report(store, bundle: Bundle, log_dir: Path, db_path: Path | None, since: datetime | None,
                 min_customers: int = MIN_CUSTOMERS) -> Report:
    """Skew of logged requests against point-in-time retrieval, and drift against training.

    Skew is checked on every logged row. Drift of the served features needs a population: with
    fewer than `min_customers` served customers it is not computed (`Report.drift_note` says so).
    """
    from monitoring.feature_log import read_log
    from training.dataset import KEYS, historical_features
    from skewless.score import score

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
    skews, rows_differing = compare_features(bundle, served.rename(columns={"request_time": "event_timestamp"}), offline, KEYS)

    training = pd.read_parquet(bundle.path / "training_set.parquet")
    batch_run, batch_scores = newest_batch_scores(db_path, bundle)
    training_scores = pd.Series(score(bundle, training).probability)
    # drift compares populations: one row per customer (its latest request), not per request
    population = served.sort_values("request_time").drop_duplicates("customer_id", keep="last")
    note = None
    if len(population) < min_customers:
        note = f"served-feature drift not computed: {len(population):,} customers served, fewer than {min_customers:,}"
    drift = drift_table(bundle, training, population if note is None else None, batch_scores, training_scores)
    return Report(
        model=f"{bundle.name}/{bundle.version}", feature_service=bundle.feature_service,
        window=(served["request_time"].min().to_pydatetime(), served["request_time"].max().to_pydatetime()),
        requests=len(served), customers=int(served["customer_id"].nunique()), rows_differing=rows_differing,
        skews=skews, drift=drift, training=training, population=population,
        batch_run=batch_run, batch_scores=batch_scores, training_scores=training_scores, drift_note=note,
    )


def newest_batch_scores(db_path: Path | None, bundle: Bundle) -> tuple[dict | None, pd.Series | None]:
    """The newest full batch run of this model version and its scores, from the predictions database."""
    from batch.status import latest_runs

    if db_path is None or not Path(db_path).exists():
        return None, None
    runs = latest_runs(Path(db_path))
    runs = runs[(runs["model_name"] == bundle.name) & (runs["model_version"] == bundle.version)]
    if runs.empty:
        return None, None
    run = runs.iloc[0]
    import duckdb

    with duckdb.connect(str(db_path), read_only=True) as con:
        scores = con.execute("SELECT churn_probability FROM churn_predictions WHERE run_id = ?", [run["run_id"]]).df()["churn_probability"]
    return {"run_id": run["run_id"], "as_of": pd.Timestamp(run["as_of"]).to_pydatetime(), "rows": int(run["rows"])}, scores
