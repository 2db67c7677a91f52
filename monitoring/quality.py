"""The model's real quality, as labels arrive: what was predicted then, against what happened.

A churn label (skewless/labels.py) says whether a customer cancelled within 30 days after its
label time L; it is known only 30 days later. A batch run at T predicted exactly that for the
30 days after T. So each committed full run's prediction (customer, T) is joined to the
customer's label with the latest L <= T and T - L < LABEL_MATCH (a week: labels are weekly), its
outcome window starting at most that much before the prediction's; a run made at a label time
matches exactly. Predictions whose label has not arrived yet are *pending*, never counted as
"did not churn".

Per week of T: ROC-AUC, PR-AUC, log loss, precision and recall at the bundle's decision
threshold, and calibration (mean predicted against observed, by decile of predicted), beside
the validation figures the bundle was promoted with. `skewless quality` prints them; a week
whose ROC-AUC is below validation by more than the tolerance is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

LABEL_MATCH = timedelta(days=7)
AUC_TOLERANCE = 0.05  # ROC-AUC this far below validation warns


@dataclass
class WeekQuality:
    week: str  # ISO week of the predictions' as-of times, e.g. 2026-W40
    predictions: int
    labelled: int
    pending: int  # no label yet: their 30 days have not passed (or not been written)
    churned: int = 0
    roc_auc: float | None = None  # None: too few labels, or only one class
    pr_auc: float | None = None
    log_loss: float | None = None
    precision: float | None = None
    recall: float | None = None
    calibration: list[dict] = field(default_factory=list)  # per decile: mean_predicted, observed_rate, rows


def joined(db_path: Path, labels_path: Path, since: datetime | None = None) -> pd.DataFrame:
    """Full runs' predictions (customer_id, as_of, churn_probability, run_id) with `churned`
    (NaN when pending) and `label_time`, one row per prediction."""
    import duckdb

    from batch.outputs import RUNS_TABLE, TABLE, connect_db

    con = connect_db(db_path, read_only=True)
    try:
        since_sql = "AND p.as_of >= ?" if since is not None else ""
        params = [since.replace(tzinfo=None)] if since is not None else []
        con.execute("SET TimeZone = 'UTC'")
        try:
            return con.execute(
                f"""
                WITH preds AS (
                    SELECT p.customer_id, p.as_of, p.churn_probability, p.run_id FROM {TABLE} p
                    JOIN {RUNS_TABLE} r USING (run_id) WHERE r.kind = 'full' {since_sql}
                ), labels AS (
                    SELECT customer_id, CAST(event_timestamp AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS label_time, churned
                    FROM read_parquet(?)
                )
                SELECT p.*, l.label_time,
                       CASE WHEN p.as_of - l.label_time < INTERVAL {LABEL_MATCH.days} DAY THEN l.churned END AS churned
                FROM preds p ASOF LEFT JOIN labels l ON p.customer_id = l.customer_id AND p.as_of >= l.label_time
                ORDER BY p.as_of, p.customer_id
                """,
                [*params, str(labels_path)],
            ).df()
        except duckdb.CatalogException:
            return pd.DataFrame(columns=["customer_id", "as_of", "churn_probability", "run_id", "label_time", "churned"])
    finally:
        con.close()


def weekly(rows: pd.DataFrame, threshold: float) -> list[WeekQuality]:
    """Quality per ISO week of the predictions' as-of time (sklearn's metrics on the labelled rows)."""
    from sklearn.metrics import average_precision_score, log_loss, precision_score, recall_score, roc_auc_score

    out = []
    if rows.empty:
        return out
    weeks = pd.to_datetime(rows["as_of"]).dt.isocalendar()
    keys = weeks["year"].astype(str) + "-W" + weeks["week"].astype(str).str.zfill(2)
    for week, part in rows.groupby(keys, sort=True):
        done = part[part["churned"].notna()]
        q = WeekQuality(week, len(part), len(done), len(part) - len(done))
        if len(done):
            y, p = done["churned"].astype(int).to_numpy(), done["churn_probability"].to_numpy(dtype=float)
            q.churned = int(y.sum())
            if 0 < y.sum() < len(y):
                q.roc_auc = float(roc_auc_score(y, p))
                q.pr_auc = float(average_precision_score(y, p))
                q.log_loss = float(log_loss(y, p, labels=[0, 1]))
            predicted = (p >= threshold).astype(int)
            q.precision = float(precision_score(y, predicted, zero_division=0))
            q.recall = float(recall_score(y, predicted, zero_division=0))
            deciles = pd.qcut(p, 10, labels=False, duplicates="drop") if len(np.unique(p)) > 1 else np.zeros(len(p), dtype=int)
            frame = pd.DataFrame({"bin": deciles, "p": p, "y": y})
            q.calibration = [{"bin": int(b), "rows": len(g), "mean_predicted": float(g["p"].mean()), "observed_rate": float(g["y"].mean())}
                             for b, g in frame.groupby("bin")]
        out.append(q)
    return out


def write_metrics(path: Path, weeks: list[WeekQuality], model: str, version: str, validation_auc: float) -> None:
    """The quality as Prometheus gauges in the text format, for node_exporter's textfile collector
    (how a batch job's figures reach Prometheus): the newest judged week's live ROC-AUC, the
    validation ROC-AUC, the predictions still pending their labels; written atomically."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    labels = {"model": model, "version": version}
    judged = [w for w in weeks if w.roc_auc is not None]
    live = Gauge("skewless_model_live_roc_auc", "ROC-AUC of the newest week whose labels have arrived.", [*labels, "week"], registry=registry)
    if judged:
        live.labels(**labels, week=judged[-1].week).set(judged[-1].roc_auc)
    Gauge("skewless_model_validation_roc_auc", "The bundle's validation ROC-AUC.", list(labels), registry=registry).labels(**labels).set(validation_auc)
    Gauge("skewless_model_predictions_pending", "Batch predictions whose labels have not arrived yet.", list(labels),
          registry=registry).labels(**labels).set(sum(w.pending for w in weeks))
    write_to_textfile(str(path), registry)


def below_validation(weeks: list[WeekQuality], validation_auc: float, tolerance: float = AUC_TOLERANCE) -> list[WeekQuality]:
    """The weeks whose ROC-AUC fell below the bundle's validation ROC-AUC by more than `tolerance`."""
    return [w for w in weeks if w.roc_auc is not None and w.roc_auc < validation_auc - tolerance]
