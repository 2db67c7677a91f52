"""Where batch scores go: a DuckDB table and Parquet partitioned by as-of date.

A run is staged completely before anything a reader sees changes, then swapped in:

- rows are written, chunk by chunk, to one Parquet file in a staging directory
  (`<parquet root>/.staging/<run id>/`), outside the table's directory, so no reader of
  `churn_predictions/**/*.parquet` ever sees it and a killed run leaves no partial partition;
- at the end, one DuckDB transaction deletes the previous rows of the same run key (model,
  version, as-of) and inserts the staged file; inside that transaction the staged file is
  renamed (os.replace, same file system: atomic) over the run key's file in
  `churn_predictions/as_of_date=YYYY-MM-DD/`, and the transaction commits. If the rename
  fails the transaction rolls back, so both outputs keep the previous run.

The DuckDB file is opened only to check it at the start and for the swap at the end, so
applications can query it while a long run is in progress (DuckDB lets one process write).
A re-run with the same key replaces that run's rows and file: no duplicates.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

TABLE = "churn_predictions"
COLUMNS = [
    ("customer_id", "BIGINT", pa.int64()),
    ("churn_probability", "DOUBLE", pa.float64()),
    ("churn_prediction", "INTEGER", pa.int32()),
    ("risk_segment", "VARCHAR", pa.string()),
    ("model_name", "VARCHAR", pa.string()),
    ("model_version", "VARCHAR", pa.string()),
    ("as_of", "TIMESTAMP", pa.timestamp("us")),
    ("scored_at", "TIMESTAMP", pa.timestamp("us")),
    ("run_id", "VARCHAR", pa.string()),
    ("run_kind", "VARCHAR", pa.string()),  # full | ad-hoc: the Parquet files are also the churn_scores view's source
]
ARROW_SCHEMA = pa.schema([(name, arrow) for name, _, arrow in COLUMNS])
SCHEMA_SQL = f"CREATE TABLE IF NOT EXISTS {TABLE} (" + ", ".join(f"{n} {t}" for n, t, _ in COLUMNS) + ")"
# One row per committed run, written in the same transaction as its predictions. `kind` is
# `full` for the scheduled run over every customer active at the as-of time, `ad-hoc` for a
# run over a list of IDs: freshness (`skewless score status`) follows full runs only.
RUNS_TABLE = "churn_runs"
RUN_COLUMNS = [
    ("run_id", "VARCHAR"), ("model_name", "VARCHAR"), ("model_version", "VARCHAR"), ("as_of", "TIMESTAMP"),
    ("scored_at", "TIMESTAMP"), ("rows", "BIGINT"), ("not_found", "BIGINT"), ("kind", "VARCHAR"),
]
RUNS_SQL = f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (" + ", ".join(f"{n} {t}" for n, t in RUN_COLUMNS) + ")"
# With `skewless score --explain-top K`: each explained customer's top K reasons
# (skewless/explain.py), committed with the run's predictions, the same run_id.
REASONS_TABLE = "churn_reasons"
REASON_COLUMNS = [
    ("customer_id", "BIGINT", pa.int64()),
    ("rank", "INTEGER", pa.int32()),  # 1 = the largest contribution
    ("feature", "VARCHAR", pa.string()),
    ("value", "VARCHAR", pa.string()),  # the value the model saw, as text; null = missing
    ("contribution", "DOUBLE", pa.float64()),  # its SHAP value (log-odds)
    ("direction", "VARCHAR", pa.string()),  # raises | lowers the churn risk
    ("base_value", "DOUBLE", pa.float64()),
    ("model_name", "VARCHAR", pa.string()),
    ("model_version", "VARCHAR", pa.string()),
    ("as_of", "TIMESTAMP", pa.timestamp("us")),
    ("run_id", "VARCHAR", pa.string()),
]
REASONS_SCHEMA = pa.schema([(name, arrow) for name, _, arrow in REASON_COLUMNS])
REASONS_SQL = f"CREATE TABLE IF NOT EXISTS {REASONS_TABLE} (" + ", ".join(f"{n} {t}" for n, t, _ in REASON_COLUMNS) + ")"
KINDS = ("full", "ad-hoc")
STAGING = ".staging"
LOCK_WAIT_SECONDS = 30.0  # how long the swap waits for another process to release the DuckDB file
DUCKDB_MEMORY_LIMIT = "512MB"


class OutputError(OSError):
    """An output that cannot be written; the message names the path and what to do."""


@dataclass(frozen=True)
class RunKey:
    """What identifies a run's rows: a re-run with the same key replaces them."""

    model_name: str
    model_version: str
    as_of: datetime  # naive UTC

    @property
    def partition(self) -> str:
        return f"as_of_date={self.as_of:%Y-%m-%d}"

    @property
    def file_name(self) -> str:
        stamp = self.as_of.strftime("%Y%m%dT%H%M%S%f")
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.model_name}-{self.model_version}-{stamp}") + ".parquet"


@contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM until the block ends (main thread, POSIX); a no-op elsewhere."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def connect_db(db_path: Path, read_only: bool = False, wait: float = LOCK_WAIT_SECONDS) -> duckdb.DuckDBPyConnection:
    """Open the predictions database, waiting up to `wait` seconds while another process holds it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            con = duckdb.connect(str(db_path), read_only=read_only)
            con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
            return con
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise OutputError(f"cannot open {db_path}: {str(exc).splitlines()[0]}") from exc
            time.sleep(0.2)
        except duckdb.Error as exc:
            raise OutputError(f"cannot open {db_path} as a DuckDB database ({str(exc).splitlines()[0]}): move it away or pass --db") from exc


def check_db(db_path: Path) -> None:
    """Create the database and table if needed; fail now, before any work, if that is impossible."""
    db_path = Path(db_path)
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {db_path.parent}: {exc.strerror or exc}: pass a writable --db or --out-dir") from exc
    if not os.access(db_path.parent, os.W_OK) or (db_path.exists() and not os.access(db_path, os.W_OK)):
        raise OutputError(f"cannot write {db_path}: permission denied: pass a writable --db or --out-dir")
    con = connect_db(db_path)
    try:
        con.execute(SCHEMA_SQL)
        con.execute(RUNS_SQL)
        for table, expected in ((TABLE, [(n, t) for n, t, _ in COLUMNS]), (RUNS_TABLE, RUN_COLUMNS)):
            found = con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position", [table]).fetchall()
            if [(n, t) for n, t in found] != expected:
                raise OutputError(f"table {table} in {db_path} has columns {found}, not the expected schema: move the database away or pass --db")
    finally:
        con.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(parquet_root: Path) -> None:
    """Remove staging directories of runs whose process is gone (killed before the swap)."""
    staging = Path(parquet_root) / STAGING
    if not staging.is_dir():
        return
    for d in staging.iterdir():
        pid_file = d / "pid"
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            pid = None
        if pid is None or not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


class PredictionWriter:
    """Stage one run's rows; `commit()` swaps them into DuckDB and Parquet, `abort()` discards them."""

    def __init__(self, db_path: Path, parquet_root: Path, key: RunKey, run_id: str, kind: str = "full"):
        if kind not in KINDS:
            raise ValueError(f"run kind {kind!r} is not one of {KINDS}")
        self.key, self.run_id, self.kind = key, run_id, kind
        self.db_path, self.parquet_root = Path(db_path), Path(parquet_root)
        check_db(self.db_path)
        self.table_dir = self.parquet_root / TABLE
        try:
            self.table_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_staging(self.parquet_root)
            self.stage_dir = self.parquet_root / STAGING / run_id
            self.stage_dir.mkdir(parents=True)
            (self.stage_dir / "pid").write_text(str(os.getpid()))
        except OSError as exc:
            raise OutputError(f"cannot write under {self.parquet_root}: {exc.strerror or exc}: pass a writable --parquet-dir or --out-dir") from exc
        self.staged_file = self.stage_dir / key.file_name
        self.final_file = self.table_dir / key.partition / key.file_name
        self.writer: pq.ParquetWriter | None = pq.ParquetWriter(self.staged_file, ARROW_SCHEMA, compression="zstd")
        self.rows = 0
        self.reasons_file = self.stage_dir / "reasons.parquet"
        self.reasons_writer: pq.ParquetWriter | None = None  # opened by the first explained chunk

    def write(self, table: pa.Table) -> None:
        """Append a chunk (columns of ARROW_SCHEMA) to the staged file."""
        assert self.writer is not None, "writer already closed"
        self.writer.write_table(table.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA))
        self.rows += table.num_rows

    def write_reasons(self, table: pa.Table) -> None:
        """Append a chunk's reasons (columns of REASONS_SCHEMA) to the staged reasons file."""
        if self.reasons_writer is None:
            self.reasons_writer = pq.ParquetWriter(self.reasons_file, REASONS_SCHEMA, compression="zstd")
        self.reasons_writer.write_table(table.select(REASONS_SCHEMA.names).cast(REASONS_SCHEMA))

    def commit(self, scored_at: datetime, not_found: int = 0) -> None:
        """Swap the staged run in: DuckDB rows, its churn_runs row and the partition file, together.

        SIGINT and SIGTERM are held back during the swap (a second or two at 10M rows), so a
        scheduler's timeout lands before or after it, never between the rename and the commit.
        """
        assert self.writer is not None, "writer already closed"
        self.writer.close()
        self.writer = None
        if self.reasons_writer is not None:
            self.reasons_writer.close()
        k = self.key
        con = connect_db(self.db_path)  # may wait for another writer: still interruptible
        try:
            with _signals_held():
                con.execute("BEGIN TRANSACTION")
                try:
                    con.execute(SCHEMA_SQL)
                    con.execute(RUNS_SQL)
                    key = [k.model_name, k.model_version, k.as_of]
                    con.execute(f"DELETE FROM {TABLE} WHERE model_name = ? AND model_version = ? AND as_of = ?", key)
                    con.execute(f"DELETE FROM {RUNS_TABLE} WHERE model_name = ? AND model_version = ? AND as_of = ?", key)
                    names = ", ".join(ARROW_SCHEMA.names)
                    con.execute(f"INSERT INTO {TABLE} ({names}) SELECT {names} FROM read_parquet(?)", [str(self.staged_file)])
                    con.execute(f"INSERT INTO {RUNS_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [self.run_id, *key, scored_at, self.rows, not_found, self.kind])
                    con.execute(REASONS_SQL)  # a re-run replaces the reasons too, with or without new ones
                    con.execute(f"DELETE FROM {REASONS_TABLE} WHERE model_name = ? AND model_version = ? AND as_of = ?", key)
                    if self.reasons_writer is not None:
                        names = ", ".join(REASONS_SCHEMA.names)
                        con.execute(f"INSERT INTO {REASONS_TABLE} ({names}) SELECT {names} FROM read_parquet(?)", [str(self.reasons_file)])
                    self._move_into_partition()
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
        finally:
            con.close()
            shutil.rmtree(self.stage_dir, ignore_errors=True)

    def _move_into_partition(self) -> None:
        partition = self.final_file.parent
        new_partition = not partition.exists()
        partition.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.staged_file, self.final_file)
        except BaseException:
            if new_partition:
                try:
                    partition.rmdir()  # only ever empty here: no partial partition
                except OSError:
                    pass
            raise

    def abort(self) -> None:
        """Discard the staged rows; nothing a reader sees has changed."""
        try:
            for writer in (self.writer, self.reasons_writer):
                if writer is not None:
                    writer.close()
            self.writer = self.reasons_writer = None
        finally:
            shutil.rmtree(self.stage_dir, ignore_errors=True)
