"""What the batch outputs say now: the newest scheduled run per model (freshness, for schedulers
and alerts), the ad-hoc runs beside it, and a run's highest-risk customers.

Freshness follows *full* runs (every customer active at the as-of time, what the weekly job
scores): scoring two IDs by hand must not make a stale churn list look fresh. Runs come from
the `churn_runs` table, written in the same transaction as each run's predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from batch.outputs import RUNS_TABLE, TABLE, connect_db

RUN_COLUMNS = ["model_name", "model_version", "as_of", "scored_at", "rows", "not_found", "kind", "run_id"]


def _runs(db_path: Path, where: str = "TRUE", params: list | None = None) -> pd.DataFrame:
    if not Path(db_path).exists():
        return pd.DataFrame(columns=RUN_COLUMNS)
    con = connect_db(Path(db_path), read_only=True)
    try:
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [RUNS_TABLE]).fetchall()[0][0]
        if not exists:
            return pd.DataFrame(columns=RUN_COLUMNS)
        return con.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM {RUNS_TABLE} WHERE {where} ORDER BY scored_at DESC, as_of DESC", params or []).df()
    finally:
        con.close()


def latest_runs(db_path: Path, kind: str = "full") -> pd.DataFrame:
    """The newest run of `kind` (by scored_at) per model name; empty when there is none yet."""
    runs = _runs(db_path, "kind = ?", [kind])
    return runs.drop_duplicates("model_name").sort_values("model_name").reset_index(drop=True)


@dataclass
class Freshness:
    runs: pd.DataFrame  # the newest full run per model
    ad_hoc: pd.DataFrame  # ad-hoc runs scored after each model's newest full run (listed, never counted as fresh)
    stale: list[str]  # model names whose newest full run is older than the limit
    now: datetime

    @property
    def ok(self) -> bool:
        return not self.runs.empty and not self.stale


def check_freshness(db_path: Path, max_age: timedelta, now: datetime | None = None) -> Freshness:
    """Which models' newest full run was scored longer than `max_age` ago (scored_at is naive UTC)."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    runs = latest_runs(db_path)
    stale = [r.model_name for r in runs.itertuples() if now - pd.Timestamp(r.scored_at).to_pydatetime() > max_age]
    ad_hoc = _runs(db_path, "kind = 'ad-hoc'")
    newest_full = dict(zip(runs["model_name"], runs["scored_at"]))
    ad_hoc = ad_hoc[[newest_full.get(r.model_name) is None or r.scored_at > newest_full[r.model_name] for r in ad_hoc.itertuples()]]
    return Freshness(runs, ad_hoc.reset_index(drop=True), stale, now)


def newest_run_id(db_path: Path, kind: str = "full") -> str | None:
    runs = _runs(db_path, "kind = ?", [kind])
    return None if runs.empty else str(runs.iloc[0]["run_id"])


def top_customers(db_path: Path, n: int = 10, run_id: str | None = None, kind: str = "full") -> pd.DataFrame:
    """The `n` highest churn probabilities of one run (default: the newest run of `kind`), from the table.

    Read from churn_predictions itself, so it shows what applications querying it see.
    """
    empty = pd.DataFrame(columns=["customer_id", "churn_probability", "churn_prediction", "risk_segment", "model_version", "as_of", "run_id"])
    run_id = run_id or newest_run_id(db_path, kind)
    if run_id is None:
        return empty
    con = connect_db(Path(db_path), read_only=True)
    try:
        return con.execute(
            f"SELECT customer_id, churn_probability, churn_prediction, risk_segment, model_version, as_of, run_id FROM {TABLE} "
            "WHERE run_id = ? ORDER BY churn_probability DESC, customer_id LIMIT ?",
            [run_id, n],
        ).df()
    finally:
        con.close()
