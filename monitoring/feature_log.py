"""What the service served, logged off the request path to Parquet.

The request path only appends its rows to in-memory lists, a list a column (no thread wake-up,
no I/O; a lock held for a few list operations). A background thread turns what accumulated
into Arrow every CONVERT_S (0.5 s), a column at a time, and every `flush_s` appends the
converted rows as one row group to the worker's current file; a file is closed and a new one
started after `rotate_rows` rows, `rotate_s` seconds, or at midnight UTC. Converting Python
values to Arrow holds the GIL, and each conversion call has a fixed cost: measured in process
at 500 requests/s (a worker's share of 1,000/s, 2026-12-06), the log thread spent ~32 us a row
when it gathered each request's rows itself every 0.1 s, ~17 us with the columns gathered on
the request path, ~7 us with those converted every 0.5 s (~1-2 ms of GIL a conversion; an
older, slower conversion held requests up for ~16 ms once a second). The Parquet write itself
releases the GIL.
The buffer is bounded: past `max_rows` pending rows a request's rows are dropped and counted
(`skewless_feature_log_dropped_total`), never waited for. `close()`, which the lifespan calls
on shutdown, writes everything still buffered and closes the file: a clean shutdown loses
nothing. A killed process loses its open file (at most `rotate_s` of logs).

Layout (hive-style, one writer per worker process):

    <log_dir>/date=YYYY-MM-DD/part-<YYYYmmddTHHMMSSZ>-<pid>-<n>.parquet

A file is written under a hidden name (`.part-...inprogress`) and renamed when closed, so a
reader only ever sees complete files.

Schema, version 1 (one row per customer scored; `not_found` IDs are not logged):

    customer_id        int64
    request_time       timestamp[us, UTC]  the request time: `as_of` of the on-demand view and
                                           the time the views' TTLs were applied at; replaying
                                           point-in-time retrieval at it must give the same features
    model_name         string
    model_version      string
    churn_probability  float64
    churn_prediction   int64               1 = churn at the bundle's decision threshold
    risk_segment       string
    <feature>, ...     the FeatureService's features in contract order, exactly the values passed
                       to score(): String -> string, Int64 -> int64, Float64 -> float64
                       (other Feast types: Int32 int32, Float32 float32, Bool bool,
                       UnixTimestamp timestamp[us, UTC]); null = missing

The Parquet schema metadata key `skewless.feature_log` holds JSON: schema_version,
feature_service, model_name, model_version and the features with their Feast dtypes.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from online.metrics import ERRORS, FEATURE_LOG_DROPPED, FEATURE_LOG_WRITTEN
from skewless.bundle import Bundle

_FILE_SEQ = itertools.count(1)  # per process: a logger of a rolled-out model never reuses a name

SCHEMA_VERSION = 1
CONVERT_S = 0.5  # how often buffered rows become Arrow (each conversion holds the GIL for ~1-2 ms at 1,000 requests/s)
METADATA_KEY = b"skewless.feature_log"
log = logging.getLogger("skewless.feature_log")

_ARROW_TYPES = {
    "String": pa.string(),
    "Int64": pa.int64(),
    "Int32": pa.int32(),
    "Float64": pa.float64(),
    "Float32": pa.float32(),
    "Bool": pa.bool_(),
    "UnixTimestamp": pa.timestamp("us", tz="UTC"),
}


def log_schema(bundle: Bundle) -> pa.Schema:
    """The feature-log schema for a bundle (see the module docstring)."""
    fields = [
        ("customer_id", pa.int64()),
        ("request_time", pa.timestamp("us", tz="UTC")),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("churn_probability", pa.float64()),
        ("churn_prediction", pa.int64()),
        ("risk_segment", pa.string()),
    ]
    fields += [(f.name, _ARROW_TYPES.get(f.dtype, pa.float64())) for f in bundle.features]
    meta = {
        "schema_version": SCHEMA_VERSION,
        "feature_service": bundle.feature_service,
        "model_name": bundle.name,
        "model_version": bundle.version,
        "features": [{"name": f.name, "dtype": f.dtype} for f in bundle.features],
    }
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta).encode()})


class Served(NamedTuple):
    """One request's scored customers, as columns (what the request path hands over)."""

    request_time: datetime
    customer_ids: list[int]
    probability: list[float]
    prediction: list[int]
    risk_segment: list[str]
    features: dict[str, list[Any]]


class FeatureLogger:
    def __init__(
        self,
        log_dir: Path,
        bundle: Bundle,
        max_rows: int = 200_000,
        flush_s: float = 1.0,
        rotate_rows: int = 1_000_000,
        rotate_s: float = 300.0,
    ):
        self.log_dir = Path(log_dir)
        self.schema = log_schema(bundle)
        self.model_name, self.model_version = bundle.name, bundle.version
        self.feature_names = [f.name for f in bundle.features]
        self.max_rows, self.flush_s = max_rows, flush_s
        self.rotate_rows, self.rotate_s = rotate_rows, rotate_s
        # what requests logged since the last conversion, a list a column (schema order, without
        # the model's name and version, which are the same on every row); swapped under _count_lock
        self._columns = self._empty_columns()
        self._buffered = 0  # rows in _columns
        self._pending = 0  # rows buffered or converted, not yet written
        self._converted: list[pa.Table] = []  # converted, not yet written (writer thread only)
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._writer: pq.ParquetWriter | None = None
        self._file: tuple[Path, Path] | None = None  # (in-progress path, final path)
        self._file_rows = 0
        self._file_started = 0.0
        self._file_day = ""
        self.thread = threading.Thread(target=self._run, name="skewless-feature-log", daemon=True)
        self.thread.start()

    def log(self, served: Served) -> None:
        """Buffer one request's rows; never waits but for the writer's swap of the buffer (a
        few list operations). Past `max_rows` pending, drop and count.

        The rows go into the buffer's columns here, while the request's values are in the CPU's
        caches (~2 us a request): gathering them a request at a time on the writer thread, 0.1 s
        later, cost ~12 us a row of the ~32 the log thread spent a row (measured in process at
        500 requests/s, 2026-12-06).
        """
        n = len(served.customer_ids)
        try:
            features = [served.features[name] for name in self.feature_names]
        except KeyError as exc:  # never the request's failure, nor a half-appended row
            log.error("feature log: a request's features lack %s; its %d rows are not logged", exc, n)
            ERRORS.labels(kind="feature_log").inc()
            FEATURE_LOG_DROPPED.inc(n)
            return
        with self._count_lock:
            if self._pending + n > self.max_rows:
                FEATURE_LOG_DROPPED.inc(n)
                return
            self._pending += n
            self._buffered += n
            ids, times, probability, prediction, segment, *rest = self._columns
            ids += served.customer_ids
            times += [served.request_time] * n
            probability += served.probability
            prediction += served.prediction
            segment += served.risk_segment
            for column, values in zip(rest, features):
                column += values

    def _empty_columns(self) -> list[list]:
        return [[] for _ in range(len(self.schema) - 2)]

    def close(self) -> None:
        """Write everything buffered, close the current file and stop the thread (idempotent)."""
        self._stop.set()
        self.thread.join(timeout=60)
        if self.thread.is_alive():
            log.error("feature log writer did not finish within 60 s; rows still buffered are lost")

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        last_write = time.monotonic()
        while not self._stop.wait(min(CONVERT_S, self.flush_s)):  # a flush_s below CONVERT_S is honoured
            self._convert()
            if time.monotonic() - last_write >= self.flush_s:
                self._flush()
                last_write = time.monotonic()
        self._convert()
        self._flush()
        self._close_file()

    def _convert(self) -> None:
        """Buffered rows -> one Arrow table, kept until the next write."""
        with self._count_lock:
            if not self._buffered:
                return
            columns, rows = self._columns, self._buffered
            self._columns, self._buffered = self._empty_columns(), 0
        try:
            self._converted.append(self._table(columns, rows))
        except Exception:  # a value Arrow refuses must not stop the log; count and carry on
            log.exception("feature log: could not convert %d rows", rows)
            ERRORS.labels(kind="feature_log").inc()
            FEATURE_LOG_DROPPED.inc(rows)
            with self._count_lock:
                self._pending -= rows

    def _flush(self) -> None:
        """Write the converted rows as one row group; rotate the file when due."""
        if self._converted:
            table = pa.concat_tables(self._converted)
            self._converted = []
            rows = table.num_rows
            with self._count_lock:
                self._pending -= rows
            try:
                self._write(table, table.column("request_time")[0].as_py())
                FEATURE_LOG_WRITTEN.inc(rows)
            except Exception:  # a full disk must not take the service down; count and carry on
                log.exception("feature log: could not write %d rows to %s", rows, self.log_dir)
                ERRORS.labels(kind="feature_log").inc()
                FEATURE_LOG_DROPPED.inc(rows)
                self._abandon_file()
        if self._writer is not None and (self._file_rows >= self.rotate_rows or time.monotonic() - self._file_started >= self.rotate_s):
            self._close_file()

    def _table(self, columns: list[list], rows: int) -> pa.Table:
        ids, times, *rest = columns
        values = [ids, times, [self.model_name] * rows, [self.model_version] * rows, *rest]
        return pa.Table.from_arrays([pa.array(v, type=f.type) for v, f in zip(values, self.schema)], schema=self.schema)

    def _write(self, table: pa.Table, first: datetime) -> None:
        day = first.astimezone(timezone.utc).strftime("%Y-%m-%d")
        if self._writer is not None and day != self._file_day:
            self._close_file()
        if self._writer is None:
            self._open_file(day)
        self._writer.write_table(table)
        self._file_rows += table.num_rows

    def _open_file(self, day: str) -> None:
        part = self.log_dir / f"date={day}"
        part.mkdir(parents=True, exist_ok=True)
        name = f"part-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{os.getpid()}-{next(_FILE_SEQ)}.parquet"
        self._file = (part / f".{name}.inprogress", part / name)
        self._writer = pq.ParquetWriter(self._file[0], self.schema)
        self._file_rows, self._file_started, self._file_day = 0, time.monotonic(), day

    def _close_file(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.close()
            os.replace(*self._file)
        except Exception:
            log.exception("feature log: could not close %s", self._file[0])
            ERRORS.labels(kind="feature_log").inc()
        self._writer, self._file = None, None

    def _abandon_file(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:
            pass
        self._writer = None


def read_log(log_dir: Path) -> pa.Table | None:
    """Every complete feature-log file under `log_dir` as one table (None when there is none)."""
    files = sorted(Path(log_dir).glob("date=*/part-*.parquet"))
    if not files:
        return None
    # ParquetFile, not read_table: read_table would add a `date` column from the directory name
    return pa.concat_tables([pq.ParquetFile(f).read() for f in files], promote_options="default")
