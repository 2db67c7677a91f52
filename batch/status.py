"""What the batch outputs say now: the newest run per model (freshness, for schedulers and
alerts) and a run's highest-risk customers (what `make demo` ends with)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from batch.outputs import TABLE, connect_db

RUN_COLUMNS = ["model_name", "model_version", "as_of", "scored_at", "rows", "run_id"]


def latest_runs(db_path: Path) -> pd.DataFrame:
    """The newest run (by scored_at) per model name: model, version, as_of, scored_at, rows, run_id.

    Empty when the database or the table does not exist yet.
    """
    if not Path(db_path).exists():
        return pd.DataFrame(columns=RUN_COLUMNS)
    con = connect_db(Path(db_path), read_only=True)
    try:
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [TABLE]).fetchall()[0][0]
        if not exists:
            return pd.DataFrame(columns=RUN_COLUMNS)
        return con.execute(
            f"""
            SELECT model_name, model_version, as_of, scored_at, rows, run_id FROM (
                SELECT model_name, model_version, as_of, run_id, max(scored_at) AS scored_at, count(*) AS rows,
                       row_number() OVER (PARTITION BY model_name ORDER BY max(scored_at) DESC, as_of DESC) AS rn
                FROM {TABLE} GROUP BY model_name, model_version, as_of, run_id
            ) WHERE rn = 1 ORDER BY model_name
            """
        ).df()
    finally:
        con.close()


@dataclass
class Freshness:
    runs: pd.DataFrame
    stale: list[str]  # model names whose newest run is older than the limit
    now: datetime

    @property
    def ok(self) -> bool:
        return not self.runs.empty and not self.stale


def check_freshness(db_path: Path, max_age: timedelta, now: datetime | None = None) -> Freshness:
    """Which models' newest run was scored longer than `max_age` ago (scored_at is naive UTC)."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    runs = latest_runs(db_path)
    stale = [r.model_name for r in runs.itertuples() if now - pd.Timestamp(r.scored_at).to_pydatetime() > max_age]
    return Freshness(runs, stale, now)


def top_customers(db_path: Path, n: int = 10, run_id: str | None = None) -> pd.DataFrame:
    """The `n` highest churn probabilities of one run (default: the newest run), from the table.

    Read from churn_predictions itself, so it shows what applications querying it see.
    """
    con = connect_db(Path(db_path), read_only=True)
    try:
        if run_id is None:
            newest = con.execute(f"SELECT run_id FROM {TABLE} ORDER BY scored_at DESC LIMIT 1").fetchall()
            if not newest:
                return pd.DataFrame(columns=["customer_id", "churn_probability", "churn_prediction", "risk_segment", "model_version", "as_of"])
            run_id = newest[0][0]
        return con.execute(
            f"SELECT customer_id, churn_probability, churn_prediction, risk_segment, model_version, as_of FROM {TABLE} "
            "WHERE run_id = ? ORDER BY churn_probability DESC, customer_id LIMIT ?",
            [run_id, n],
        ).df()
    finally:
        con.close()
