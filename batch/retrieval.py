"""Point-in-time features for many customers at one as-of time, in bounded chunks, through Feast.

Each chunk of customer IDs becomes Feast's entity frame, (customer_id, event_timestamp = T,
as_of = T), the very rows training builds for a label at T, and goes through
`get_historical_features(features=<the bundle's FeatureService>, filter_by_created_timestamp=True)`
on the DuckDB offline store. So a batch score at T uses exactly the features training would
have used at T: Feast's point-in-time join, its TTLs, its tie-breaking, its on-demand views.

Nothing around Feast's call computes a feature. The speed is the offline store's
(feast_plugins/asof_offline_store.py, named in feature_store.yaml): DuckDB's ASOF JOIN, the
on-demand views fed fast, a memory limit and a spill directory, so peak memory is bounded by the
chunk size, not by the customer count. With Feast's stock `type: duckdb` the same code runs,
only slower. tests/test_batch.py proves the result equal to training's `to_df()`.

Which customers are active at T (the default set to score) is a selection, not a feature: it
is read straight from the profile view's source with Feast's rule for "latest row known at T"
(`active_customers`), and tests compare it with Feast's answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore, FeatureView
from feast.data_format import ParquetFormat
from feast.infra.offline_stores.file_source import FileSource
from feast.types import from_feast_to_pyarrow_type

from feast_plugins.asof_offline_store import AsofRetrievalJob
from skewless.contract import Contract, resolve  # noqa: F401  (re-exported for callers)
from skewless.sql import ident, literal
from training.dataset import KEYS, REQUEST_TIME

DEFAULT_CHUNK_ROWS = 250_000
DUCKDB_MEMORY_LIMIT = "768MB"  # the active-customer scan's; DuckDB spills beyond it
PROFILE_VIEW = "customer_profile"  # whose status and signup date say who is active
ACTIVE_SCAN_ROWS = 4_000_000  # source rows per range when listing active customers


class RetrievalError(ValueError):
    """A source the active-customer scan cannot read as Feast does; the message says what to do."""


@dataclass(frozen=True)
class ViewSource:
    """What the registry says about where a feature view's rows are and how they are timed."""

    view: str
    path: str
    key: str
    timestamp_field: str
    created_field: str | None
    ttl_seconds: int | None
    features: tuple[str, ...]


def view_source(store: FeatureStore, view: FeatureView) -> ViewSource:
    """Read a view's source from the registry; refuse anything the generated SQL would not match."""
    src = view.batch_source
    if not isinstance(src, FileSource):
        raise RetrievalError(f"feature view {view.name!r} is not over a file source ({type(src).__name__}): pass --customers FILE")
    fmt = src.file_format
    if not (isinstance(fmt, ParquetFormat) or (fmt is None and src.path.endswith(".parquet"))):
        raise RetrievalError(f"feature view {view.name!r} reads {src.path}, which is not Parquet: pass --customers FILE")
    if src.field_mapping:
        raise RetrievalError(f"feature view {view.name!r} has a field mapping, which the active-customer scan does not apply: pass --customers FILE")
    keys = [c.name for c in view.entity_columns]
    if len(keys) != 1 or view.projection.join_key_map:
        raise RetrievalError(f"feature view {view.name!r} has join keys {keys}: the active-customer scan handles one plain key; pass --customers FILE")
    ttl = int(view.ttl.total_seconds()) if view.ttl else None  # Feast: `if ttl:`, so 0 means none
    if view.ttl and view.ttl.total_seconds() != ttl:
        raise RetrievalError(f"feature view {view.name!r} has a TTL with a fraction of a second: pass --customers FILE")
    path = FileSource.get_uri_for_file_path(store.repo_path, src.path)
    if Path(path).is_dir():
        path = str(Path(path) / "**" / "*.parquet")  # a directory of Parquet files, as Feast reads it
    return ViewSource(
        view=view.name,
        path=path,
        key=keys[0],
        timestamp_field=src.timestamp_field,
        created_field=src.created_timestamp_column or None,
        ttl_seconds=ttl,
        features=tuple(f.name for f in view.features),
    )


def latest_rows_sql(src: ViewSource, columns: list[str], id_filter: str = "TRUE") -> str:
    """One row per key: the latest known at `$as_of` within the TTL, with Feast's ordering.

    Timestamps are compared as TIMESTAMPTZ (Feast casts both columns to UTC timestamps the
    same way); `$as_of` is a bound parameter.
    """
    ts = f"CAST({ident(src.timestamp_field)} AS TIMESTAMPTZ)"
    where = [id_filter, f"{ts} <= $as_of"]
    order = [f"{ts} DESC"]
    if src.created_field:
        created = f"CAST({ident(src.created_field)} AS TIMESTAMPTZ)"
        where.append(f"{created} <= $as_of")
        order.append(f"{created} DESC")
    if src.ttl_seconds:
        where.append(f"{ts} >= $as_of - INTERVAL {src.ttl_seconds} SECOND")
    key = ident(src.key)
    cols = ", ".join([key] + [ident(c) for c in columns])
    return (
        f"SELECT {cols} FROM read_parquet({literal(src.path)}) WHERE {' AND '.join(where)} "
        f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {', '.join(order)}) = 1"
    )


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a memory limit and UTC session time (for the active-customer scan)."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET TimeZone = 'UTC'")
    return con


def _utc(as_of: datetime) -> datetime:
    if as_of.tzinfo is None:
        raise ValueError(f"as-of time {as_of.isoformat()} has no time zone")
    return as_of.astimezone(timezone.utc)


def _key_range(path: str, key: str) -> tuple[int, int, int] | None:
    """(min key, max key, rows) of a Parquet source from its footer statistics when it has them."""
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowInvalid):
        return None
    col = meta.schema.names.index(key) if key in meta.schema.names else None
    if col is None or meta.num_row_groups == 0:
        return None
    lows, highs = [], []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max:
            return None
        lows.append(stats.min)
        highs.append(stats.max)
    return int(min(lows)), int(max(highs)), meta.num_rows


def active_customers(store: FeatureStore, as_of: datetime, view_name: str = PROFILE_VIEW) -> pd.Series:
    """Customers active at `as_of`, sorted: their latest profile snapshot known then says
    `status = 'active'` and they signed up before `as_of`.

    "Known then" is the same rule as the features (event time and arrival at or before
    `as_of`, within the view's TTL), so every customer listed has a profile at `as_of`. The
    view's source comes from the registry. The scan goes in ranges of customer IDs, so even
    10M customers' snapshots never sit in memory at once.
    """
    try:
        view = store.get_feature_view(view_name)
    except Exception as exc:  # FeastObjectNotFoundException and friends
        raise RetrievalError(f"feature view {view_name!r} is not in the registry: run `skewless apply`") from exc
    src = view_source(store, view)
    missing = {"status", "signup_date"} - set(src.features)
    if missing:
        raise RetrievalError(f"feature view {view_name!r} has no {sorted(missing)}: cannot tell who is active; pass --customers FILE")
    con = connect()
    ranges = [(None, None)]
    bounds = _key_range(src.path, src.key)
    if bounds is not None:
        lo, hi, rows = bounds
        parts = max(1, -(-rows // ACTIVE_SCAN_ROWS))
        step = -(-(hi - lo + 1) // parts)  # Python ints: no overflow near the int64 limit
        ranges = [(start, min(start + step, hi + 1)) for start in range(lo, hi + 1, step)]
    key = ident(src.key)
    out = []
    for start, stop in ranges:
        id_filter = "TRUE" if start is None else f"{key} >= {int(start)} AND {key} < {int(stop)}"
        latest = latest_rows_sql(src, ["status", "signup_date"], id_filter)
        sql = f"SELECT {key} FROM ({latest}) WHERE status = 'active' AND CAST(signup_date AS TIMESTAMPTZ) < $as_of ORDER BY {key}"
        out.append(con.execute(sql, {"as_of": _utc(as_of)}).fetchnumpy()[src.key])
    con.close()
    ids = np.concatenate(out) if out else np.empty(0, dtype=np.int64)
    return pd.Series(np.asarray(ids, dtype=np.int64), name=src.key)


def source_time_ranges(store: FeatureStore, contract: Contract) -> dict[str, tuple[datetime, datetime] | None]:
    """Earliest and latest event time (UTC) of each view's source; None for an empty source.

    DuckDB answers min/max from the Parquet footers' statistics, so this is instant at any size.
    """
    con = connect()
    ranges: dict[str, tuple[datetime, datetime] | None] = {}
    try:
        for view in contract.views:
            src = view_source(store, view)
            ts = f"CAST({ident(src.timestamp_field)} AS TIMESTAMPTZ)"
            lo, hi = con.execute(f"SELECT min({ts}), max({ts}) FROM read_parquet({literal(src.path)})").fetchall()[0]
            ranges[view.name] = None if lo is None else (lo.astimezone(timezone.utc), hi.astimezone(timezone.utc))
    finally:
        con.close()
    return ranges


def chunk_ids(customer_ids, chunk_rows: int) -> Iterator[np.ndarray]:
    """Sorted, de-duplicated int64 IDs in pieces of at most `chunk_rows`."""
    if chunk_rows <= 0:
        raise ValueError(f"chunk size must be positive, got {chunk_rows}")
    ids = np.unique(np.asarray(customer_ids, dtype=np.int64))
    for start in range(0, len(ids), chunk_rows):
        yield ids[start : start + chunk_rows]


def stream_feature_tables(
    store: FeatureStore,
    contract: Contract,
    customer_ids,
    as_of: datetime,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    seconds: dict[str, float] | None = None,
) -> Iterator[pa.Table]:
    """Arrow tables of (customer_id + the service's features, in contract order) at `as_of`.

    One `get_historical_features(...).to_arrow()` per chunk (see the module docstring); rows
    come in customer_id order, and a customer with no row in a view gets nulls for it, never
    dropped. `seconds` (when given) accumulates time spent in "query" (the point-in-time join)
    and "on_demand" (the on-demand views), as the offline store reports them.
    """
    seconds = seconds if seconds is not None else {}
    service = store.get_feature_service(contract.service)
    declared = {f.name: from_feast_to_pyarrow_type(f.dtype) for p in service.feature_view_projections for f in p.features}
    key, timestamp = KEYS
    when = pd.Timestamp(_utc(as_of))
    for ids in chunk_ids(customer_ids, chunk_rows):
        started = time.perf_counter()
        entity = pd.DataFrame({key: ids, timestamp: when, REQUEST_TIME: when})
        job = store.get_historical_features(entity_df=entity, features=service, filter_by_created_timestamp=True)
        table = job.to_arrow()
        if not isinstance(job, AsofRetrievalJob):  # Feast's own store: rows in an order of DuckDB's
            table = table.sort_by(key)
        split = getattr(job, "seconds", {"join": time.perf_counter() - started, "on_demand": 0.0})
        seconds["query"] = seconds.get("query", 0.0) + split["join"]
        seconds["on_demand"] = seconds.get("on_demand", 0.0) + split["on_demand"]
        # a chunk where a feature is null for every row: the declared type, so every chunk has one schema
        for i, name in enumerate(table.column_names):
            if pa.types.is_null(table.schema.field(i).type) and name in declared:
                table = table.set_column(i, name, pa.nulls(table.num_rows, declared[name]))
        yield table.select([key] + contract.features)


def stream_features(
    store: FeatureStore,
    contract: Contract,
    customer_ids,
    as_of: datetime,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    seconds: dict[str, float] | None = None,
) -> Iterator[pd.DataFrame]:
    """stream_feature_tables as DataFrames (what the scoring function and tests take)."""
    for table in stream_feature_tables(store, contract, customer_ids, as_of, chunk_rows, seconds):
        yield table.to_pandas()
