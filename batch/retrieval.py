"""Point-in-time features for many customers at one as-of time, in bounded chunks.

Feast's `get_historical_features` answers the general question (every entity row at its own
time) with a range join and materializes the whole result, on-demand features included, in
memory. A batch run asks a narrower one: every customer at the same time T. For that question
each feature view reduces to Feast's own rule, per customer:

    the row with the latest event time, ties broken by the latest `created`, among rows with
    event time <= T, `created` <= T (filter_by_created_timestamp, which every skewless
    retrieval uses) and, when the view has a TTL, event time >= T - ttl

which is what `ibis.point_in_time_join` + `deduplicate` compute for an entity row at T. The SQL
is generated from the registry's view definitions (source path, timestamp and created columns,
TTL, fields, join key) and run by DuckDB one chunk of customer IDs at a time, so memory is
bounded by the chunk, not by the customer count. The on-demand view is then computed by the
registry's own transform (batch/on_demand.py). `tests/test_batch.py` proves the result equal,
value for value, to Feast's `get_historical_features`, which stays available as
`engine="feast"` (the same chunks, each through Feast).
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

from batch.on_demand import apply_on_demand, constant_values
from training.contract import Contract, resolve  # noqa: F401  (re-exported for callers)
from training.dataset import KEYS, REQUEST_TIME, historical_features

ENGINES = ("duckdb", "feast")
DEFAULT_CHUNK_ROWS = 250_000
DUCKDB_MEMORY_LIMIT = "768MB"  # DuckDB spills beyond this; with a chunk in Python the run stays under 2 GB
PROFILE_VIEW = "customer_profile"  # whose status and signup date say who is active
ACTIVE_SCAN_ROWS = 4_000_000  # source rows per range when listing active customers
REQUEST_TIME_TYPE = pa.timestamp("us", tz="UTC")


class RetrievalError(ValueError):
    """A view the as-of engine cannot read exactly as Feast does; the message says what to use."""


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
        raise RetrievalError(f"feature view {view.name!r} is not over a file source ({type(src).__name__}): use --engine feast")
    fmt = src.file_format
    if not (isinstance(fmt, ParquetFormat) or (fmt is None and src.path.endswith(".parquet"))):
        raise RetrievalError(f"feature view {view.name!r} reads {src.path}, which is not Parquet: use --engine feast")
    if src.field_mapping:
        raise RetrievalError(f"feature view {view.name!r} has a field mapping, which the as-of engine does not apply: use --engine feast")
    keys = [c.name for c in view.entity_columns]
    if len(keys) != 1 or view.projection.join_key_map:
        raise RetrievalError(f"feature view {view.name!r} has join keys {keys}: the as-of engine handles one plain key; use --engine feast")
    ttl = int(view.ttl.total_seconds()) if view.ttl else None  # Feast: `if ttl:`, so 0 means none
    if view.ttl and view.ttl.total_seconds() != ttl:
        raise RetrievalError(f"feature view {view.name!r} has a TTL with a fraction of a second: use --engine feast")
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


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def latest_rows_sql(src: ViewSource, columns: list[str], id_filter: str = "TRUE") -> str:
    """One row per key: the latest known at `$as_of` within the TTL, with Feast's ordering.

    Timestamps are compared as TIMESTAMPTZ (Feast casts both columns to UTC timestamps the
    same way); `$as_of` is a bound parameter.
    """
    ts = f"CAST({_ident(src.timestamp_field)} AS TIMESTAMPTZ)"
    where = [id_filter, f"{ts} <= $as_of"]
    order = [f"{ts} DESC"]
    if src.created_field:
        created = f"CAST({_ident(src.created_field)} AS TIMESTAMPTZ)"
        where.append(f"{created} <= $as_of")
        order.append(f"{created} DESC")
    if src.ttl_seconds:
        where.append(f"{ts} >= $as_of - INTERVAL {src.ttl_seconds} SECOND")
    key = _ident(src.key)
    cols = ", ".join([key] + [_ident(c) for c in columns])
    return (
        f"SELECT {cols} FROM read_parquet({_literal(src.path)}) WHERE {' AND '.join(where)} "
        f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {', '.join(order)}) = 1"
    )


def connect(temp_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a memory limit (it spills beyond it) and UTC session time."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET TimeZone = 'UTC'")
    if temp_dir is not None:
        con.execute(f"SET temp_directory = {_literal(str(temp_dir))}")
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
    key = _ident(src.key)
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
            ts = f"CAST({_ident(src.timestamp_field)} AS TIMESTAMPTZ)"
            lo, hi = con.execute(f"SELECT min({ts}), max({ts}) FROM read_parquet({_literal(src.path)})").fetchall()[0]
            ranges[view.name] = None if lo is None else (lo.astimezone(timezone.utc), hi.astimezone(timezone.utc))
    finally:
        con.close()
    return ranges


def data_time_range(store: FeatureStore, contract: Contract) -> tuple[datetime, datetime]:
    """Earliest and latest event time over the contract's sources (UTC)."""
    found = [r for r in source_time_ranges(store, contract).values() if r is not None]
    if not found:
        raise RetrievalError("the feature views' sources hold no rows: run `skewless generate`")
    return min(lo for lo, _ in found), max(hi for _, hi in found)


def chunk_ids(customer_ids, chunk_rows: int) -> Iterator[np.ndarray]:
    """Sorted, de-duplicated int64 IDs in pieces of at most `chunk_rows`."""
    if chunk_rows <= 0:
        raise ValueError(f"chunk size must be positive, got {chunk_rows}")
    ids = np.unique(np.asarray(customer_ids, dtype=np.int64))
    for start in range(0, len(ids), chunk_rows):
        yield ids[start : start + chunk_rows]


def features_sql(sources: list[ViewSource], key: str) -> str:
    """Features of every view for the IDs in the registered table `chunk_ids`, $lo <= id <= $hi.

    The ID range lets DuckDB skip Parquet row groups by their statistics; the semi-join keeps
    the window small when a chunk's IDs are sparse (an IDs file spread over all customers).
    """
    k = _ident(key)
    id_filter = f"{k} BETWEEN $lo AND $hi AND {k} IN (SELECT {k} FROM chunk_ids)"
    selects, joins = [], []
    for i, src in enumerate(sources):
        alias = f"v{i}"
        joins.append(f"LEFT JOIN ({latest_rows_sql(src, list(src.features), id_filter)}) {alias} ON {alias}.{_ident(src.key)} = e.{k}")
        selects += [f"{alias}.{_ident(f)}" for f in src.features]
    return f"SELECT e.{k}, {', '.join(selects)} FROM chunk_ids e {' '.join(joins)} ORDER BY e.{k}"


def stream_feature_tables(
    store: FeatureStore,
    contract: Contract,
    customer_ids,
    as_of: datetime,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    seconds: dict[str, float] | None = None,
    temp_dir: Path | None = None,
) -> Iterator[pa.Table]:
    """Arrow tables of (key + every source feature + the on-demand features) at `as_of`.

    Rows come in key order; a customer with no row in a view gets nulls for it, never dropped.
    `seconds` (when given) accumulates time spent in "query" (DuckDB) and "on_demand".
    """
    seconds = seconds if seconds is not None else {}
    sources = [view_source(store, v) for v in contract.views]
    keys = {s.key for s in sources}
    if len(keys) != 1:
        raise RetrievalError(f"the views of {contract.service!r} join on different keys {sorted(keys)}: use --engine feast")
    key = keys.pop()
    as_of = _utc(as_of)
    sql = features_sql(sources, key)
    con = connect(temp_dir)
    try:
        for ids in chunk_ids(customer_ids, chunk_rows):
            t = time.perf_counter()
            con.register("chunk_ids", pa.table({key: pa.array(ids, pa.int64())}))
            table = con.sql(sql, params={"as_of": as_of, "lo": int(ids[0]), "hi": int(ids[-1])}).to_arrow_table()
            con.unregister("chunk_ids")
            t2 = time.perf_counter()
            seconds["query"] = seconds.get("query", 0.0) + t2 - t
            n = table.num_rows
            # the entity frame Feast would get: the key, event_timestamp = as_of, and the request time
            constants = {KEYS[1]: constant_values(as_of, n, REQUEST_TIME_TYPE), REQUEST_TIME: constant_values(as_of, n, REQUEST_TIME_TYPE)}
            table = apply_on_demand(contract.odfvs, table, constants)
            seconds["on_demand"] = seconds.get("on_demand", 0.0) + time.perf_counter() - t2
            yield table.select([key] + contract.features)
    finally:
        con.close()


def stream_features(
    store: FeatureStore,
    contract: Contract,
    customer_ids,
    as_of: datetime,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    engine: str = "duckdb",
    seconds: dict[str, float] | None = None,
    temp_dir: Path | None = None,
) -> Iterator[pd.DataFrame]:
    """DataFrames of (customer_id + the service's features, in contract order) at `as_of`.

    engine="duckdb": the as-of retrieval above. engine="feast": Feast's own
    `get_historical_features` (filter_by_created_timestamp) for the same chunks, entity rows
    at `as_of` with `as_of` as the request time, exactly as training builds its rows.
    Both yield rows in customer_id order, chunk by chunk.
    """
    if engine == "duckdb":
        for table in stream_feature_tables(store, contract, customer_ids, as_of, chunk_rows, seconds, temp_dir):
            yield table.to_pandas()
        return
    if engine != "feast":
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    seconds = seconds if seconds is not None else {}
    when = pd.Timestamp(_utc(as_of))
    for ids in chunk_ids(customer_ids, chunk_rows):
        t = time.perf_counter()
        keys = pd.DataFrame({KEYS[0]: ids, KEYS[1]: when})
        out = historical_features(store, contract.service, keys)
        seconds["query"] = seconds.get("query", 0.0) + time.perf_counter() - t
        yield out[[KEYS[0]] + contract.features].reset_index(drop=True)
