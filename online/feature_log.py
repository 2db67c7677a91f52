"""What the service served, logged off the request path to Parquet.

Requests put one row per prediction on a bounded in-memory queue (never blocking: when it is
full the row is dropped and counted in `skewless_feature_log_dropped_total`); a background
thread writes them as Parquet files every `flush_rows` rows or `flush_s` seconds, each to a
temporary name first and renamed, so a reader never sees a partial file. `close()` drains the
queue, so a clean shutdown loses nothing.

File layout: <log_dir>/date=YYYY-MM-DD/part-<unix-ms>-<pid>.parquet, schema:
  customer_id int64, request_time timestamp[us, UTC], model_name string, model_version string,
  churn_probability float64, churn_prediction int64, risk_segment string,
  then one column per contract feature (string for String features, float64 otherwise).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from online.metrics import FEATURE_LOG_DROPPED
from training.bundle import Bundle

_STOP = object()


def log_schema(bundle: Bundle) -> pa.Schema:
    fields = [
        ("customer_id", pa.int64()),
        ("request_time", pa.timestamp("us", tz="UTC")),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("churn_probability", pa.float64()),
        ("churn_prediction", pa.int64()),
        ("risk_segment", pa.string()),
    ]
    fields += [(f.name, pa.string() if f.is_categorical else pa.float64()) for f in bundle.features]
    return pa.schema(fields)


class FeatureLogger:
    def __init__(self, log_dir: Path, bundle: Bundle, max_rows: int = 100_000, flush_rows: int = 5_000, flush_s: float = 5.0):
        self.log_dir = Path(log_dir)
        self.schema = log_schema(bundle)
        self.queue: queue.Queue = queue.Queue(maxsize=max_rows)
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.thread = threading.Thread(target=self._run, name="feature-log", daemon=True)
        self.thread.start()

    def log(self, row: dict[str, Any]) -> None:
        """Queue one served row; never blocks the request."""
        try:
            self.queue.put_nowait(row)
        except queue.Full:
            FEATURE_LOG_DROPPED.inc()

    def close(self) -> None:
        """Flush everything queued and stop the writer thread."""
        self.queue.put(_STOP)
        self.thread.join(timeout=30)

    def _run(self) -> None:
        rows: list[dict] = []
        deadline = time.monotonic() + self.flush_s
        while True:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._write(rows)
                return
            if item is not None:
                rows.append(item)
            if len(rows) >= self.flush_rows or time.monotonic() >= deadline:
                self._write(rows)
                rows = []
                deadline = time.monotonic() + self.flush_s

    def _write(self, rows: list[dict]) -> None:
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=self.schema)
        first: datetime = rows[0]["request_time"]
        part = self.log_dir / f"date={first:%Y-%m-%d}"
        part.mkdir(parents=True, exist_ok=True)
        name = f"part-{int(time.time() * 1000)}-{os.getpid()}.parquet"
        tmp = part / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, part / name)


def read_log(log_dir: Path) -> "pa.Table | None":
    files = sorted(Path(log_dir).glob("date=*/part-*.parquet"))
    if not files:
        return None
    return pa.concat_tables([pq.ParquetFile(f).read() for f in files], promote_options="default")
