"""Feast's DuckDB offline store, with point-in-time retrieval done by DuckDB's `ASOF JOIN`.

Named in `feature_store.yaml` (`offline_store: type: feast_plugins.asof_offline_store.AsofDuckDBOfflineStore`),
so every caller of `get_historical_features` (training, batch on either engine, the skew
report's replay, a user's `FeatureStore`, the stock `feast` CLI) gets it, with no second path.

Feast 0.67's DuckDB store (feast/infra/offline_stores/ibis.py `point_in_time_join`) joins every
entity row to every source row of its key that is old enough, then keeps the newest per entity
row: the join grows with the history (1M customers x 15 days of activity = 15M pairs), and it
builds a string row id per entity row to group them. The answer it computes is, per entity row
at time t and feature view:

    among the source rows of the key with  ts <= t  (and created <= t when
    filter_by_created_timestamp), take the greatest (ts, created); its features if
    ts + ttl >= t, else nulls.

This module computes the same answer without the fan-out. The rows *visible* at t are those
with `visible_from <= t` (visible_from = ts, or greatest(ts, created) with the created filter),
and that set only grows with t, so the winner at t is the running maximum of (ts, created) over
the rows ordered by visible_from. One window pass keeps the rows that *become* the winner (the
"timeline"), and `ASOF LEFT JOIN` on visible_from picks, per entity row, the timeline row in
force at t. The TTL is then checked on that winner alone: every other visible row is no newer,
so if it expired they all did. Source rows no entity row can see (keys outside the entity keys'
range, or not among them for a small frame; later than the latest entity time; older than the
earliest minus the TTL) are dropped before the window. With one entity time (a batch at T) the
window is a per-key `QUALIFY` and the join a hash join.

Everything else is Feast's: the entity frame's timestamp inference and UTC conversion, the
on-demand views (returned with the job and applied by Feast's `RetrievalJob.to_arrow`), the
retrieval metadata, and every other method (pulls for materialization, writes, logging,
monitoring), which `DuckDBOfflineStore` keeps. Sources this SQL is not written for (not local
Parquet, an entity frame given as SQL, substrait on-demand views, a view without join keys) go
to Feast's own implementation unchanged.

Differences from Feast's store, both deliberate: rows come back in the entity frame's order
(Feast's come in an order of DuckDB's), and when two source rows tie on both ts and created
either may win in Feast; here too (equal keys, DuckDB picks one), so such data has no defined
answer on either store. Memory is bounded by `memory_limit` (DuckDB spills beyond it to a
temporary directory of its own, removed after the query), not by the row count.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Optional, Union

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from feast.data_format import ParquetFormat
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.ibis import _get_entity_df_event_timestamp_range, _get_entity_schema, _to_utc
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from pydantic import StrictInt, StrictStr

from feast_plugins.on_demand import transform_arrow
from skewless.sql import ident, literal

ROW = "__skewless_row"  # the entity frame's row number: output order and the join back
ENTITY_TIME = "__skewless_t"
# Up to this many entity rows at one time, sources are first filtered to the entity keys (a hash
# semi-join); beyond it the join alone does that: at 1M rows the semi-join cost 0.75 s of 1.9 s.
SEMI_JOIN_ROWS = 50_000


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Feast's DuckDB settings, plus the bounds of the DuckDB each retrieval runs in."""

    type: StrictStr = "feast_plugins.asof_offline_store.AsofDuckDBOfflineStore"
    memory_limit: StrictStr = "768MB"  # beyond it DuckDB spills to a temporary directory
    threads: Optional[StrictInt] = None  # DuckDB's default: one per core
    temp_directory: Optional[StrictStr] = None  # where spills go (default: a new temporary directory per query)


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    """DuckDBOfflineStore with `get_historical_features` by ASOF JOIN (see the module docstring)."""

    supports_filter_by_created_timestamp = True

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: Union[pd.DataFrame, str],
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        if not _handles(config, feature_views, entity_df, odfvs):
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project, full_feature_names, filter_by_created_timestamp
            )
        event_timestamp_col = offline_utils.infer_event_timestamp_from_entity_df(_get_entity_schema(entity_df))
        time_range = _get_entity_df_event_timestamp_range(entity_df, event_timestamp_col)
        entity_df = _to_utc(entity_df, event_timestamp_col)  # Feast's conversion, in place as Feast does it
        views = [_view_query(config, fv, feature_refs, full_feature_names) for fv in feature_views]
        return AsofRetrievalJob(
            config=config,
            entity_df=entity_df,
            event_timestamp_col=event_timestamp_col,
            views=views,
            filter_by_created_timestamp=filter_by_created_timestamp,
            on_demand_feature_views=odfvs,
            full_feature_names=full_feature_names,
            metadata=RetrievalMetadata(
                features=feature_refs,
                keys=list(set(entity_df.columns) - {event_timestamp_col}),
                min_event_timestamp=time_range[0],
                max_event_timestamp=time_range[1],
            ),
        )


def with_feast_duckdb(store):
    """The same repo and registry read through Feast's own `type: duckdb` offline store: what the
    tests and benchmarks compare this store with."""
    from feast import FeatureStore

    config = store.config.model_dump(by_alias=True, exclude_none=True)
    config["offline_store"] = {"type": "duckdb"}
    return FeatureStore(repo_path=str(store.repo_path), config=RepoConfig(**config))


def _is_local_parquet(view: FeatureView) -> bool:
    src = view.batch_source
    if not isinstance(src, FileSource) or "://" in src.path:
        return False
    fmt = src.file_format
    return isinstance(fmt, ParquetFormat) or (fmt is None and src.path.endswith(".parquet"))


def _handles(config: RepoConfig, views: list[FeatureView], entity_df, odfvs: list[OnDemandFeatureView]) -> bool:
    """True when the ASOF SQL covers the request; anything else goes to Feast's DuckDB store."""
    return (
        isinstance(entity_df, pd.DataFrame)
        and not any(o.mode == "substrait" for o in odfvs)
        and all(_is_local_parquet(v) and v.entity_columns for v in views)
    )


@dataclass(frozen=True)
class _View:
    """What one feature view contributes: where its rows are, how they are timed, what to select."""

    path: str
    join_keys: dict[str, str]  # source column -> entity column
    ts: str
    created: str | None
    ttl: timedelta | None
    columns: dict[str, str]  # source column -> output name
    renames: dict[str, str]  # the source's field mapping


def _view_query(config: RepoConfig, view: FeatureView, feature_refs: list[str], full_feature_names: bool) -> _View:
    """Feast's reading of a view (ibis.py `read_fv`): the features asked of it, how they are named."""
    src = view.batch_source
    prefix = view.projection.name_to_use()
    features = [ref.split(":")[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
    base = view.projection.name_alias or view.name
    columns = {f: (f"{base}__{f}" if full_feature_names else f) for f in features}  # source column -> output name
    path = FileSource.get_uri_for_file_path(config.repo_path, src.path) if config.repo_path else src.path
    return _View(
        path=str(path),
        join_keys=view.projection.join_key_map or {e.name: e.name for e in view.entity_columns},
        ts=src.timestamp_field,
        created=src.created_timestamp_column or None,
        ttl=view.ttl if view.ttl else None,  # Feast: `if ttl:`, so a zero TTL means none
        columns=columns,
        renames=dict(src.field_mapping),
    )


def _timeline_sql(view: _View, i: int, filter_created: bool, one_time: bool, semi_join: bool) -> str:
    """The source rows that become a key's winner, with the time from which they are visible.

    With one entity time (a batch at T) that is simply each key's winner at T, one row per key
    (`QUALIFY row_number() = 1`). With several, the window pass of the module docstring.
    """
    source = f"read_parquet({literal(view.path)})"
    if view.renames:
        renames = ", ".join(f"{ident(old)} AS {ident(new)}" for old, new in view.renames.items())
        source = f"(SELECT * RENAME ({renames}) FROM {source})"
    ts = f"CAST({ident(view.ts)} AS TIMESTAMPTZ)"
    created = f"CAST({ident(view.created)} AS TIMESTAMPTZ)" if view.created else "NULL::TIMESTAMPTZ"
    keys = [f"{ident(k)} AS __k{j}" for j, k in enumerate(view.join_keys)]
    feats = [f"{ident(c)} AS __f{j}" for j, c in enumerate(view.columns)]
    same_key = " AND ".join(f"src.{ident(k)} = ent.{ident(ek)}" for k, ek in view.join_keys.items())
    # the entity keys' range always (a chunk of a batch is a range of IDs: the rest is skipped
    # before any sort), the keys themselves when it pays (see SEMI_JOIN_ROWS)
    in_range = [f"src.{ident(k)} BETWEEN ${_param('lo', ek)} AND ${_param('hi', ek)}" for k, ek in view.join_keys.items()]
    where = [f"{ts} <= $max_t", *in_range] + ([f"EXISTS (SELECT 1 FROM ent WHERE {same_key})"] if semi_join else [])
    if view.ttl:
        where.append(f"{ts} >= $min_t - {_interval(view.ttl)}")
    visible = ts
    if filter_created and view.created:
        where.append(f"{created} <= $max_t")
        visible = f"greatest({ts}, {created})"
    rows = (f"SELECT {', '.join(keys + feats)}, {ts} AS __ts, {created} AS __c, {visible} AS __vis "
            f"FROM {source} AS src WHERE {' AND '.join(where)}")
    # (ts, created) as one 128-bit number, ordered as Feast orders rows (ts, then created, a null
    # created lowest): a plain max() where a struct's was 1.4x slower
    order = "((epoch_us(__ts)::HUGEINT << 64) + coalesce(epoch_us(__c), -9223372036854775807)::HUGEINT)"
    key_cols = [f"__k{j}" for j in range(len(view.join_keys))]
    if one_time:  # every visible row is a candidate at the one time: keep each key's greatest
        newest = f"row_number() OVER (PARTITION BY {', '.join(key_cols)} ORDER BY __ts DESC, __c DESC NULLS LAST)"
        return f"tl{i} AS (SELECT * FROM ({rows}) QUALIFY {newest} = 1)"
    return (
        f"tl{i} AS (SELECT * EXCLUDE (__best) FROM ("
        f"SELECT *, max({order}) OVER (PARTITION BY {', '.join(key_cols)} ORDER BY __vis) AS __best FROM ({rows})) "
        f"WHERE {order} = __best)"
    )


def _param(bound: str, entity_column: str) -> str:
    """The name of the bound parameter holding an entity key column's smallest or largest value."""
    return f"{bound}_{entity_column.encode().hex()}"


def _interval(ttl: timedelta) -> str:
    return f"to_microseconds({int(ttl / timedelta(microseconds=1))})"


def _select_sql(views: list[_View], entity_columns: list[str], entity_time: str, filter_created: bool, one_time: bool, semi_join: bool) -> str:
    """One query: every view's timeline, ASOF-joined to the entity rows, in entity order."""
    ctes = [f"ent AS (SELECT *, CAST({ident(entity_time)} AS TIMESTAMPTZ) AS {ENTITY_TIME} FROM entity)"]
    joins, outputs = [], [f"e.{ident(c)}" for c in entity_columns]
    for i, view in enumerate(views):
        ctes.append(_timeline_sql(view, i, filter_created, one_time, semi_join))
        on = [f"e.{ident(ek)} = tl{i}.__k{j}" for j, ek in enumerate(view.join_keys.values())]
        on.append(f"e.{ENTITY_TIME} >= tl{i}.__vis")
        if one_time:  # one row per key, visible by construction: a plain hash join
            on.pop()
        joins.append(f"{'LEFT' if one_time else 'ASOF LEFT'} JOIN tl{i} ON {' AND '.join(on)}")
        fresh = f"tl{i}.__ts >= e.{ENTITY_TIME} - {_interval(view.ttl)}" if view.ttl else f"tl{i}.__ts IS NOT NULL"
        outputs += [f"CASE WHEN {fresh} THEN tl{i}.__f{j} END AS {ident(name)}" for j, name in enumerate(view.columns.values())]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(outputs)} FROM ent e {' '.join(joins)} ORDER BY e.{ROW}"


class AsofRetrievalJob(RetrievalJob):
    """The retrieval, run when asked for (`to_df`/`to_arrow`, as Feast's jobs are)."""

    def __init__(self, config: RepoConfig, entity_df: pd.DataFrame, event_timestamp_col: str, views: list[_View],
                 filter_by_created_timestamp: bool, on_demand_feature_views: list[OnDemandFeatureView],
                 full_feature_names: bool, metadata: RetrievalMetadata):
        super().__init__()
        self._config = config.offline_store
        self._repo_path = str(config.repo_path)
        self._entity_df = entity_df
        self._ts = event_timestamp_col
        self._views = views
        self._filter_created = filter_by_created_timestamp
        self._odfvs = on_demand_feature_views
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        """None left to apply: `_to_arrow_internal` applies them (faster, feast_plugins/on_demand.py)."""
        return []

    @property
    def metadata(self) -> Optional[RetrievalMetadata]:
        return self._metadata

    def _to_df_internal(self, timeout: Optional[int] = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def _to_arrow_internal(self, timeout: Optional[int] = None) -> pa.Table:
        """The point-in-time join, then the on-demand views asked for; `seconds` says how long each took."""
        started = time.perf_counter()
        table = self._join()
        joined = time.perf_counter()
        table = self._apply_on_demand(table)
        self.seconds = {"join": joined - started, "on_demand": time.perf_counter() - joined}
        return table

    def to_record_batches(self, rows: int = 250_000) -> Iterator[pa.RecordBatch]:
        """The result in Arrow batches of about `rows` (on-demand views applied per batch), for a
        caller that need not hold it whole: memory is the DuckDB limit plus one batch."""
        with self._query() as result:
            for batch in result.to_arrow_reader(rows):
                yield from self._apply_on_demand(pa.Table.from_batches([batch])).to_batches()

    def _join(self) -> pa.Table:
        with self._query() as result:
            return result.to_arrow_table()

    @contextmanager
    def _query(self) -> Iterator[duckdb.DuckDBPyRelation]:
        """The point-in-time join as a DuckDB result, on a connection open for the block."""
        entity = pa.Table.from_pandas(self._entity_df, preserve_index=False)
        for i, field in enumerate(entity.schema):  # Feast's ibis hands DuckDB microseconds
            if pa.types.is_timestamp(field.type) and field.type.unit == "ns":
                entity = entity.set_column(i, field.name, entity[i].cast(pa.timestamp("us", tz=field.type.tz), safe=False))
        columns = list(entity.column_names)
        entity = entity.append_column(ROW, pa.array(np.arange(entity.num_rows, dtype=np.int64)))
        with _connect(self._config) as con:
            con.register("entity", entity)
            t = f"CAST({ident(self._ts)} AS TIMESTAMPTZ)"
            keys = sorted({ek for v in self._views for ek in v.join_keys.values()})
            bounds = ", ".join(f"min({ident(k)}), max({ident(k)})" for k in keys)
            lo, hi, *key_bounds = con.sql(f"SELECT min({t}), max({t}), {bounds} FROM entity").fetchall()[0]
            if lo is None:  # no entity rows (or no times): nothing can be visible
                lo = hi = pd.Timestamp(0, tz="UTC").to_pydatetime()
            params = {"min_t": lo, "max_t": hi}
            for i, k in enumerate(keys):
                params[_param("lo", k)], params[_param("hi", k)] = key_bounds[2 * i], key_bounds[2 * i + 1]
            # the key filter first pays off for a small entity frame, or before the window pass
            semi_join = lo != hi or entity.num_rows <= SEMI_JOIN_ROWS
            sql = _select_sql(self._views, columns, self._ts, self._filter_created, lo == hi, semi_join)
            params = {k: v for k, v in params.items() if f"${k}" in sql}
            yield con.sql(sql, params=params)

    def _apply_on_demand(self, table: pa.Table) -> pa.Table:
        """Feast's RetrievalJob.to_arrow step for on-demand views: each view's output columns that
        were asked for (by the feature references), appended in view order."""
        asked: dict[str, set[str]] = {}
        for ref in self._metadata.features:
            view, _, feature = ref.partition(":")
            asked.setdefault(view, set()).add(feature)
        for odfv in self._odfvs:
            name = odfv.projection.name_to_use()
            wanted = asked.get(odfv.name, asked.get(name, set()))
            expected = {f"{name}__{f}" if self._full_feature_names else f for f in wanted}
            out = transform_arrow(odfv, table, self._full_feature_names)
            for col in out.column_names:
                if not col.startswith("__index") and col in expected:
                    table = table.append_column(col, out[col])
        return table

    def persist(self, storage, allow_overwrite: bool = False, timeout: Optional[int] = None):
        """A saved dataset, written as Feast's DuckDB store writes one."""
        import ibis
        from feast.infra.offline_stores.duckdb import _write_data_source

        _write_data_source(ibis.memtable(self.to_arrow()), storage.to_data_source(), self._repo_path, "overwrite", allow_overwrite)


@contextmanager
def _connect(cfg) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB for one retrieval: UTC, memory-limited, spilling to its own directory."""
    own_spill = not getattr(cfg, "temp_directory", None)
    spill = Path(tempfile.mkdtemp(prefix="skewless-asof-")) if own_spill else Path(cfg.temp_directory)
    settings = {"memory_limit": getattr(cfg, "memory_limit", "768MB"), "temp_directory": str(spill)}
    if getattr(cfg, "threads", None):
        settings["threads"] = cfg.threads
    con = duckdb.connect(config=settings)
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()
        if own_spill:
            shutil.rmtree(spill, ignore_errors=True)
