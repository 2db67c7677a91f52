"""Where batch scores go: a DuckDB table and Parquet partitioned by as-of date.

A run is staged completely before anything users read changes, then swapped in:

- DuckDB: rows go to a staging table chunk by chunk; one transaction then deletes the previous
  rows of the same (model, version, as-of) and inserts the new ones. A run killed before that
  commit leaves the table as it was (the stale staging table is dropped by the next run).
- Parquet: rows go to a hidden temporary file inside the partition directory; `os.replace`
  renames it over the run's file at the end. Readers never see a partial file, and a re-run
  replaces the file instead of adding a second one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TABLE = "churn_predictions"
SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    customer_id BIGINT,
    churn_probability DOUBLE,
    churn_prediction INTEGER,
    risk_segment VARCHAR,
    model_name VARCHAR,
    model_version VARCHAR,
    as_of TIMESTAMP,
    scored_at TIMESTAMP,
    run_id VARCHAR
)"""
ARROW_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("churn_probability", pa.float64()),
        ("churn_prediction", pa.int32()),
        ("risk_segment", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("as_of", pa.timestamp("us")),
        ("scored_at", pa.timestamp("us")),
        ("run_id", pa.string()),
    ]
)


@dataclass(frozen=True)
class RunKey:
    model_name: str
    model_version: str
    as_of: datetime  # naive UTC

    @property
    def file_name(self) -> str:
        stamp = self.as_of.strftime("%Y%m%dT%H%M%S%f")
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.model_name}-{self.model_version}-{stamp}") + ".parquet"


class PredictionWriter:
    """Stage one run's rows in DuckDB and Parquet; `commit()` swaps them in, `abort()` discards."""

    def __init__(self, db_path: Path, parquet_root: Path, key: RunKey, run_id: str):
        self.key, self.run_id = key, run_id
        self.db_path, self.parquet_root = Path(db_path), Path(parquet_root)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.partition = self.parquet_root / TABLE / f"as_of_date={key.as_of:%Y-%m-%d}"
        self.partition.mkdir(parents=True, exist_ok=True)
        self.final_file = self.partition / key.file_name
        self.tmp_file = self.partition / f".{run_id}.tmp"
        self.staging = f"staging_{re.sub(r'[^A-Za-z0-9]', '_', run_id)}"
        self.con = duckdb.connect(str(self.db_path))
        self.con.execute(SCHEMA_SQL)
        for (name,) in self.con.execute("SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'staging_%'").fetchall():
            self.con.execute(f'DROP TABLE IF EXISTS "{name}"')  # left by a run that was killed
        self.con.execute(f"CREATE TABLE {self.staging} AS SELECT * FROM {TABLE} LIMIT 0")
        self.writer = pq.ParquetWriter(self.tmp_file, ARROW_SCHEMA)
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame[ARROW_SCHEMA.names], schema=ARROW_SCHEMA, preserve_index=False)
        self.writer.write_table(table)
        self.con.register("chunk", table)
        self.con.execute(f"INSERT INTO {self.staging} SELECT * FROM chunk")
        self.con.unregister("chunk")
        self.rows += len(frame)

    def commit(self) -> None:
        self.writer.close()
        k = self.key
        self.con.execute("BEGIN TRANSACTION")
        self.con.execute(f"DELETE FROM {TABLE} WHERE model_name = ? AND model_version = ? AND as_of = ?", [k.model_name, k.model_version, k.as_of])
        self.con.execute(f"INSERT INTO {TABLE} SELECT * FROM {self.staging}")
        self.con.execute(f"DROP TABLE {self.staging}")
        self.con.execute("COMMIT")
        os.replace(self.tmp_file, self.final_file)
        self.con.close()

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp_file.unlink(missing_ok=True)
            try:
                self.con.execute(f"DROP TABLE IF EXISTS {self.staging}")
            finally:
                self.con.close()
            if self.partition.is_dir() and not any(self.partition.iterdir()):
                self.partition.rmdir()


def latest_runs(db_path: Path) -> pd.DataFrame:
    """The newest run per model: model, version, as_of, scored_at, rows, run_id."""
    if not Path(db_path).exists():
        return pd.DataFrame(columns=["model_name", "model_version", "as_of", "scored_at", "rows", "run_id"])
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [TABLE]).fetchone()[0]
        if not exists:
            return pd.DataFrame(columns=["model_name", "model_version", "as_of", "scored_at", "rows", "run_id"])
        return con.execute(
            f"""
            SELECT model_name, model_version, as_of, scored_at, rows, run_id FROM (
                SELECT model_name, model_version, as_of, max(scored_at) AS scored_at, count(*) AS rows, any_value(run_id) AS run_id,
                       row_number() OVER (PARTITION BY model_name ORDER BY max(scored_at) DESC) AS rn
                FROM {TABLE} GROUP BY model_name, model_version, as_of
            ) WHERE rn = 1 ORDER BY model_name
            """
        ).df()
    finally:
        con.close()
