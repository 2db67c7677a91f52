"""Feast's Redis online store, returning a feature view's row only while it is within the view's TTL.

Why: Feast 0.67's `RedisOnlineStore` returns whatever Redis holds, however old, as PRESENT,
while historical retrieval (training, batch) nulls a view's values once the row is older than
the view's TTL. Served features would then differ from the ones the model was trained on
exactly for customers whose activity stopped: the customers a churn model is about. Here a
row is dropped (as if Redis did not hold it) when

    event_timestamp + view.ttl < read time        (Feast's offline rule; a ttl of 0/None never expires)

inside the store, so every caller of `get_online_features` (the service, `feast serve`, a
notebook) gets it, and on-demand views, which Feast computes after the read, see None exactly
where offline they see null.

The read time is the caller's request time when it sets one with `read_time(...)` (the service
does: the same instant it passes as `as_of`), else the wall clock at the read.

Configure it in feature_store.yaml by class path:

    online_store:
      type: feast_plugins.ttl_store.TTLRedisOnlineStore
      connection_string: ${SKEWLESS_REDIS}

It is a mixin plus a two-line class, so it combines with another Redis store subclass (say one
with faster writes): `class FastTTLRedisOnlineStore(TTLReadMixin, FastRedisOnlineStore)` and a
`FastTTLRedisOnlineStoreConfig` whose `type` is that class path (Feast finds the config class
by appending `Config` to the store class name, in the same module).

The service's own per-request read (online/features.py:RedisReader) applies the same rule.

An on-demand view stored in Redis (`write_to_online_store=True`) has no TTL of its own, and
Feast 0.67 stamps its rows with the time they were *written* (feast/utils.py
`_convert_arrow_odfv_to_proto`), not the time of the source rows they were computed from.
Offline, the view is computed from its sources as of the read, with a source past its TTL
giving nulls. So a stored row is served only while its sources' rows are: the read also fetches
each source view's `_ts:<view>` field from the same Redis hash (one HMGET, as before) and drops
the row when a source with a TTL has expired (source TTLs read from the registry once per
process, and again when a view is not known yet). A source with no row in Redis decides
nothing (it may simply have no data for that key).

The connection string comes from `${SKEWLESS_REDIS}`; when that is unset (the stock CLI run
without it), the first use fails with one line naming the variable instead of Feast's
`KeyError: 'port'`.

Which read paths: Feast 0.67's `get_online_features` calls `_read_features_per_fv` (one Redis
pipeline for all views), `get_online_features_async` calls `_read_features_per_fv_async`, and
direct callers use `online_read` / `online_read_async`. All four end in
`_convert_redis_values_to_protobuf`, which knows the view only by name; the four entry points
record the TTL of the views they read (in a context variable, so concurrent reads in threads or
tasks never see each other's), and the conversion applies it. A read that reaches the
conversion by any other path (a future Feast version) raises instead of serving stale values.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Literal

import click
from feast import FeatureView
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, _versioned_fv_name

CLASS_PATH = "feast_plugins.ttl_store.TTLRedisOnlineStore"

# The request time reads are relative to (None: the wall clock at the read).
_READ_TIME: ContextVar[float | None] = ContextVar("skewless_ttl_read_time", default=None)
# TTL in seconds (0 = never expires) of each view the current read covers, by the name the
# Redis store uses for it; for a stored on-demand view, its sources' TTLs by source name.
_VIEW_TTLS: ContextVar[dict[str, float | dict[str, float]] | None] = ContextVar("skewless_ttl_views", default=None)
# Marks the extra hash fields a stored on-demand view's read asks for: its sources' `_ts:<view>`.
SOURCE_TS = "_skewless_source_ts:"


@contextmanager
def read_time(when: datetime) -> Iterator[None]:
    """Apply TTLs relative to `when` (timezone-aware) for reads made inside the block."""
    token = _READ_TIME.set(when.timestamp())
    try:
        yield
    finally:
        _READ_TIME.reset(token)


def ttl_seconds(view: FeatureView) -> float:
    """A view's TTL in seconds; 0 when it has none (Feast treats a falsy ttl as 'never expires')."""
    return view.ttl.total_seconds() if view.ttl else 0.0


class OnlineStoreNotConfigured(click.ClickException, ValueError):
    """The Redis connection is not set; a one-line error for the stock `feast` CLI too
    (click prints a ClickException as `Error: ...`), and a ValueError for Python callers."""


def check_connection_string(connection_string: str) -> None:
    """Refuse an empty connection string or one whose `${VAR}` was not set."""
    if not connection_string.strip() or "${" in connection_string:
        raise OnlineStoreNotConfigured(
            f"the Redis online store has no address (feature_store.yaml gives {connection_string!r}): "
            "export SKEWLESS_REDIS=host:port (e.g. 127.0.0.1:6379), or REDIS_URL for skewless commands"
        )


def drop_expired(rows: list[tuple[Any, Any]], ttl_s: float, now_s: float) -> list[tuple[Any, Any]]:
    """(event_ts, values) rows with every row past the TTL replaced by (None, None): not found."""
    if ttl_s <= 0:
        return rows
    return [(None, None) if ts is not None and ts.timestamp() + ttl_s < now_s else (ts, values) for ts, values in rows]


class TTLReadMixin:
    """Put first in the bases of a RedisOnlineStore (sub)class to apply view TTLs on every read."""

    _source_ttls: dict[str, float] | None = None  # feature view name -> TTL s, for stored on-demand views

    def _get_client(self, online_store_config):
        check_connection_string(online_store_config.connection_string)
        return super()._get_client(online_store_config)

    async def _get_client_async(self, online_store_config):
        check_connection_string(online_store_config.connection_string)
        return await super()._get_client_async(online_store_config)

    def _ttl(self, config, table) -> float | dict[str, float]:
        if hasattr(table, "ttl"):
            return ttl_seconds(table)
        # an on-demand view written to the online store: the TTL of each of its sources
        sources = _source_names(table)
        if self._source_ttls is None or any(name not in self._source_ttls for name in sources):
            from feast import FeatureStore

            views = FeatureStore(repo_path=str(config.repo_path), config=config).list_feature_views()
            self._source_ttls = {v.name: ttl_seconds(v) for v in views}
        return {name: self._source_ttls.get(name, 0.0) for name in sources}

    def _generate_hset_keys_for_features(self, feature_view, requested_features=None, fv_name_override=None):
        names, keys = super()._generate_hset_keys_for_features(feature_view, requested_features, fv_name_override)
        if not hasattr(feature_view, "ttl"):  # a stored on-demand view: read its sources' event times too
            for source in _source_names(feature_view):
                keys.append(f"_ts:{source}")
                names.append(SOURCE_TS + source)
        return names, keys

    @contextmanager
    def _views(self, config, tables: Iterable) -> Iterator[None]:
        token = _VIEW_TTLS.set({_versioned_fv_name(t, config): self._ttl(config, t) for t in tables})
        try:
            yield
        finally:
            _VIEW_TTLS.reset(token)

    def online_read(self, config, table, entity_keys, requested_features=None):
        with self._views(config, [table]):
            return super().online_read(config, table, entity_keys, requested_features)

    async def online_read_async(self, config, table, entity_keys, requested_features=None):
        with self._views(config, [table]):
            return await super().online_read_async(config, table, entity_keys, requested_features)

    def _read_features_per_fv(self, config, grouped_refs, *args, **kwargs):
        with self._views(config, [table for table, _ in grouped_refs]):
            return super()._read_features_per_fv(config, grouped_refs, *args, **kwargs)

    async def _read_features_per_fv_async(self, config, grouped_refs, *args, **kwargs):
        with self._views(config, [table for table, _ in grouped_refs]):
            return await super()._read_features_per_fv_async(config, grouped_refs, *args, **kwargs)

    def _convert_redis_values_to_protobuf(self, redis_values, feature_view, requested_features):
        rows = super()._convert_redis_values_to_protobuf(redis_values, feature_view, requested_features)
        ttls = _VIEW_TTLS.get()
        if ttls is None or feature_view not in ttls:
            raise RuntimeError(
                f"{type(self).__name__}: Feast read feature view {feature_view!r} through a path that "
                "feast_plugins/ttl_store.py does not wrap, so its TTL cannot be applied; update TTLReadMixin "
                "for this Feast version"
            )
        now_s = _READ_TIME.get()
        now_s = time.time() if now_s is None else now_s
        ttl = ttls[feature_view]
        if isinstance(ttl, dict):
            return self._with_sources(redis_values, feature_view, requested_features, ttl, now_s)
        return drop_expired(rows, ttl, now_s)

    def _with_sources(self, redis_values, feature_view, requested_features, source_ttls, now_s):
        """A stored on-demand view's rows, each dropped when one of its sources has expired."""
        extra = [i for i, name in enumerate(requested_features) if name.startswith(SOURCE_TS)]
        sources = [requested_features[i][len(SOURCE_TS):] for i in extra]
        for i in reversed(extra):  # in place: Feast fills the response from this same list
            del requested_features[i]
        skip = set(extra)
        own = [[v for j, v in enumerate(values) if j not in skip] for values in redis_values]
        rows = super()._convert_redis_values_to_protobuf(own, feature_view, requested_features)
        out = []
        for row, values in zip(rows, redis_values):
            expired = any(
                values[i] and source_ttls.get(src, 0.0) > 0 and _seconds(values[i]) + source_ttls[src] < now_s
                for i, src in zip(extra, sources)
            )
            out.append((None, None) if expired else row)
        return out


def _source_names(odfv) -> list[str]:
    return [p.name for p in odfv.source_feature_view_projections.values()]


def _seconds(timestamp_bytes: bytes) -> float:
    """A `_ts:<view>` field (a protobuf Timestamp) in seconds since the epoch."""
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.ParseFromString(timestamp_bytes)
    return ts.seconds + ts.nanos / 1e9


class TTLRedisOnlineStore(TTLReadMixin, RedisOnlineStore):
    """Feast's Redis online store with view TTLs applied on read (see the module docstring)."""


class TTLRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Same settings as Feast's `type: redis`; only the type names this class."""

    type: Literal["feast_plugins.ttl_store.TTLRedisOnlineStore"] = CLASS_PATH  # type: ignore[assignment]


def ensure_ttl(store) -> str | None:
    """Make `store` read through a TTL-applying online store; a warning when the yaml did not.

    With `type: feast_plugins.ttl_store.TTLRedisOnlineStore` (or any TTLReadMixin store) in
    feature_store.yaml this only checks. With the stock `type: redis` it swaps in the TTL store
    for this process, so the service never serves a value past its TTL, and returns a warning:
    other readers of the same yaml (`feast serve`, notebooks) still do until the yaml names it.
    Any other store is refused: its reads would silently differ from offline.
    """
    provider = store._get_provider()
    online = provider.online_store
    if isinstance(online, TTLReadMixin):
        return None
    if type(online) is not RedisOnlineStore:
        raise TypeError(
            f"online store {type(online).__module__}.{type(online).__name__} does not apply feature-view TTLs, "
            "so served features would differ from training; in feature_store.yaml use "
            f"`type: {CLASS_PATH}`, or put feast_plugins.ttl_store.TTLReadMixin first in your store's bases"
        )
    provider._online_store = TTLRedisOnlineStore()  # same config class and connection, reads with TTL
    return (
        f"feature_store.yaml has online_store type `redis`, which returns values past a view's TTL: "
        f"this service applies TTLs itself, but set `type: {CLASS_PATH}` so every reader does"
    )
