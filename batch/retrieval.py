"""Point-in-time features for many customers at one as-of time, streamed in bounded chunks.

Feast's `get_historical_features` answers the general question (every entity row at its own
time) and materializes the whole result in memory. A batch run asks a narrower one: all
customers at the same time T. For that, each feature view reduces to "the latest row per
customer with event time <= T, arrived (`created`) <= T, and not older than the view's TTL,
ties broken by the later `created`" -- exactly the semantics of Feast's DuckDB store with
filter_by_created_timestamp, which `tests/test_batch.py` checks row for row.

Everything here is read from the Feast registry: sources, timestamp columns, TTLs, fields and
the on-demand view, whose own transform (`OnDemandFeatureView.transform_arrow`, the function
Feast's offline path calls) computes the derived features. Nothing about a feature is written
here a second time. `engine="feast"` runs Feast's own retrieval instead, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
from feast import FeatureStore, FeatureView
from feast.infra.offline_stores.file_source import FileSource

from training.contract import Contract, resolve  # noqa: F401  (re-exported for callers)
from training.dataset import REQUEST_TIME, historical_features

ENTITY_KEY = "customer_id"
DUCKDB_MEMORY_LIMIT = "1GB"  # DuckDB spills to disk beyond this, so 10M customers fit in 2 GB RSS


def source_path(store: FeatureStore, view: FeatureView) -> str:
    src = view.batch_source
    if not isinstance(src, FileSource):
        raise ValueError(f"feature view {view.name!r} is not over a file source; use --engine feast")
    return FileSource.get_uri_for_file_path(store.repo_path, src.path)


def _latest_sql(store: FeatureStore, view: FeatureView, as_of: str, id_range: tuple[int, int] | None = None) -> str:
    """SQL for the latest row per customer as of the `as_of` literal, with Feast's semantics."""
    src = view.batch_source
    ts, created = src.timestamp_field, src.created_timestamp_column
    cols = ", ".join(f'"{f.name}"' for f in view.features)
    where = [f'"{ts}" <= {as_of}']
    if id_range is not None:
        where.append(f"{ENTITY_KEY} BETWEEN {int(id_range[0])} AND {int(id_range[1])}")
    order = [f'"{ts}" DESC']
    if created:
        where.append(f'"{created}" <= {as_of}')
        order.append(f'"{created}" DESC')
    if view.ttl and view.ttl.total_seconds() > 0:
        where.append(f"\"{ts}\" + INTERVAL '{int(view.ttl.total_seconds())} seconds' >= {as_of}")
    path = source_path(store, view).replace("'", "''")
    return (
        f"SELECT {ENTITY_KEY}, {cols} FROM read_parquet('{path}') WHERE {' AND '.join(where)} "
        f"QUALIFY row_number() OVER (PARTITION BY {ENTITY_KEY} ORDER BY {', '.join(order)}) = 1"
    )


def connect(temp_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
    con.execute("SET preserve_insertion_order = false")
    if temp_dir is not None:
        con.execute(f"SET temp_directory = '{temp_dir}'")
    con.execute("SET TimeZone = 'UTC'")
    return con


def active_customers(store: FeatureStore, as_of: datetime, view_name: str = "customer_profile") -> pd.Series:
    """Customers whose latest profile snapshot known at `as_of` says `active`."""
    view = store.get_feature_view(view_name)
    con = connect()
    con.execute("SET VARIABLE as_of = ?::TIMESTAMPTZ", [as_of])
    sql = _latest_sql(store, view, "getvariable('as_of')")
    ids = con.sql(f"SELECT {ENTITY_KEY} FROM ({sql}) WHERE status = 'active' ORDER BY {ENTITY_KEY}").to_arrow_table()
    return ids.column(ENTITY_KEY).to_pandas()


def data_time_range(store: FeatureStore, contract: Contract) -> tuple[datetime, datetime]:
    """Earliest and latest event time over the contract's sources."""
    con = connect()
    lows, highs = [], []
    for view in contract.views:
        ts = view.batch_source.timestamp_field
        path = source_path(store, view).replace("'", "''")
        lo, hi = con.execute(f"SELECT min(\"{ts}\"), max(\"{ts}\") FROM read_parquet('{path}')").fetchone()
        if lo is not None:
            lows.append(lo)
            highs.append(hi)
    if not lows:
        raise ValueError("the feature views' sources hold no rows: run `skewless generate`")
    return min(lows), max(highs)


def stream_features(
    store: FeatureStore,
    contract: Contract,
    customer_ids: pd.Series,
    as_of: datetime,
    chunk_rows: int = 250_000,
    engine: str = "duckdb",
    temp_dir: Path | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield frames of (customer_id + the service's features) at `as_of`, `chunk_rows` at a time.

    Rows come in customer_id order. Customers with no rows get nulls (never dropped).
    """
    ids = pd.Series(customer_ids, dtype="int64").drop_duplicates().sort_values(ignore_index=True)
    if engine == "feast":
        for start in range(0, len(ids), chunk_rows):
            keys = pd.DataFrame({ENTITY_KEY: ids.iloc[start : start + chunk_rows].to_numpy(), "event_timestamp": pd.Timestamp(as_of)})
            out = historical_features(store, contract.service, keys)
            yield out[[ENTITY_KEY] + contract.features].reset_index(drop=True)
        return
    if engine != "duckdb":
        raise ValueError(f"unknown engine {engine!r}: use duckdb or feast")
    con = connect(temp_dir)
    con.execute("SET VARIABLE as_of = ?::TIMESTAMPTZ", [as_of])
    as_of_scalar = pd.Timestamp(as_of)
    for start in range(0, len(ids), chunk_rows):
        # One customer-id range at a time: DuckDB prunes the sources' row groups to that range,
        # so the per-view window query stays small whatever the total (10M customers in 2 GB).
        chunk = ids.iloc[start : start + chunk_rows]
        lo, hi = int(chunk.iloc[0]), int(chunk.iloc[-1])
        con.register("entity_ids", pa.table({ENTITY_KEY: pa.array(chunk.to_numpy(), pa.int64())}))
        selects, joins = [], []
        for i, view in enumerate(contract.views):
            alias = f"v{i}"
            latest = _latest_sql(store, view, "getvariable('as_of')", id_range=(lo, hi))
            joins.append(f"LEFT JOIN ({latest}) {alias} USING ({ENTITY_KEY})")
            selects += [f'{alias}."{f.name}"' for f in view.features]
        sql = f"SELECT e.{ENTITY_KEY}, {', '.join(selects)} FROM entity_ids e {' '.join(joins)} ORDER BY e.{ENTITY_KEY}"
        table = con.sql(sql).to_arrow_table()
        con.unregister("entity_ids")
        table = table.append_column(REQUEST_TIME, pa.array([as_of_scalar] * table.num_rows, pa.timestamp("us", tz="UTC")))
        for odfv in contract.odfvs:
            derived = odfv.transform_arrow(table, full_feature_names=False)
            for name in derived.column_names:
                if name not in table.column_names:
                    table = table.append_column(name, derived[name])
        yield table.select([ENTITY_KEY] + contract.features).to_pandas()
