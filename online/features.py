"""Online features for a set of customers at the request time, read from Redis.

Two steps:

1. Read the feature views behind the FeatureService from Feast's Redis online store, one HMGET
   per customer (Feast keeps all of a customer's views in one hash), and apply each view's TTL
   relative to the request time: a row that offline retrieval would null comes back as not
   found. `RedisReader` reads Feast's layout as feast_plugins/redis_layout.py describes it (keys and
   fields derived from Feast's own functions) and decodes values as Feast's
   `OnlineResponse.to_dict` does.
2. Run the registry's on-demand feature views on those values with `as_of` = request time:
   `OnDemandFeatureView.transform_dict`, the very call Feast makes for a python-mode view inside
   `get_online_features`, on the same inputs (the view's declared sources, the join key, the
   request data).

Asking Feast for the FeatureService in one `get_online_features` call (request time passed as
`as_of` in the entity rows, TTLs applied by feast_plugins/ttl_store.py) computes the same thing, and
`via_feature_service` does exactly that; tests/test_online.py checks the two agree value for
value. It is not the per-request path because most of its time goes into machinery around the
reads: resolving the feature references in the registry on every call, building entity-key
protobufs, one ValueProto object and dict per value, a protobuf response and its conversion
back to Python, and, around the on-demand transform, every value to protobuf and back once more.
Measured here (in process, hot): ~0.7 ms for one customer and ~170 us per customer in a batch of
100 through Feast; ~0.2 ms (half of it the Redis round trip) and ~20 us with the two steps
above. It stays the path for what this
shortcut does not cover (pandas-mode or aggregating on-demand views, values written to the
online store, other key types): those are served correctly, only slower.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import hiredis
import redis
from feast import FeatureStore
from feast.infra.online_stores.redis import RedisType
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.value_type import ValueType
from redis.backoff import NoBackoff
from redis.retry import Retry
from typeguard import suppress_type_checks

from feast_plugins.redis_server import store_client
from feast_plugins.redis_layout import events_seconds, feature_field, int_key_layout, python_values, ts_field, view_name
from feast_plugins.ttl_store import ensure_ttl, read_time, ttl_seconds
from skewless.contract import resolve
from training.dataset import REQUEST_TIME
from skewless.store import open_store

_MORE = object()  # hiredis: no whole reply in what was read yet
TS_SUFFIX = "__ts"  # Feast's to_dict(include_event_timestamps=True): event time in whole seconds, 0 when absent


def with_timeouts(connection_string: str, timeout_s: float) -> str:
    """A Feast Redis connection string with socket timeouts, unless it sets its own.

    Feast passes `key=value` parts to redis.Redis; without a timeout a read from a Redis that
    hangs waits forever.
    """
    parts = connection_string.split(",")
    given = {p.split("=", 1)[0].strip() for p in parts if "=" in p}
    parts += [f"{k}={timeout_s}" for k in ("socket_timeout", "socket_connect_timeout") if k not in given]
    return ",".join(parts)


def connect_store(repo_path: Path, connection: str | None, timeout_s: float, retries: int) -> tuple[FeatureStore, str | None]:
    """The FeatureStore as the service uses it; also a warning about the yaml, if any.

    - Redis reads wait at most `timeout_s` and are retried `retries` times at once (redis-py's
      default is 3 retries with exponential backoff: seconds of waiting for a live request).
    - Every read applies the views' TTLs (feast_plugins/ttl_store.py), whatever the yaml says.
    - The registry is read once: the bundle's contract is verified against this snapshot, and
      a refresh on the request path (Feast's cache TTL) would cost a read of the registry
      database in some request and could change the features under a model loaded once.
      Registry changes take effect when the service restarts, as a new model does.
    """
    store = open_store(repo_path)
    config = store.config.online_store
    config.connection_string = with_timeouts(connection or config.connection_string, timeout_s)
    warning = ensure_ttl(store)
    store.registry.cached_registry_proto_ttl = timedelta(0)  # 0 = never expires (CachingRegistry)
    store_client(store).set_retry(Retry(NoBackoff(), retries))
    return store, warning


@dataclass
class Lookup:
    """Features of n customers at one request time."""

    values: dict[str, list[Any]]  # the FeatureService's features, in its order; one entry per customer
    found: list[bool]  # False: no value from any feature view at the request time (skewless/contract.py:found)
    view_ts: dict[str, list[float]]  # per view: event time (unix s) of the row used, 0 when none
    read_s: float  # Redis read, TTLs applied
    transform_s: float  # on-demand transform


@dataclass(frozen=True)
class _ViewRead:
    name: str  # the view's name in the registry (view_ts key)
    features: list[str]
    ttl_s: float  # 0: never expires
    start: int  # where its fields begin in the HMGET reply; its `_ts` field follows them


class RedisReader:
    """Several views of int64-keyed customers straight from Feast's Redis hashes, TTLs applied.

    The reads Feast's `get_online_features` makes (the same keys, fields and decoding) without
    what it builds around them per call. One HMGET per customer fetches every view at once;
    the HMGETs of all the customers of a call go out together, one round trip (`_hmget`).
    """

    def __init__(self, client: redis.Redis, key_layout, views: list[_ViewRead], fields: list[bytes]):
        self.client, self.key_layout, self.views, self.fields = client, key_layout, views, fields
        # `HMGET <key> <fields>` in Redis's protocol (RESP) is head + the key as a bulk string + tail
        self._resp_head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
        self._resp_tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
        # for the reads (_hmget); connects on first use, closed when the reader is dropped
        self._conn = client.connection_pool.make_connection()
        self._conn_lock = threading.Lock()
        self._buf = bytearray(1 << 16)  # what _replies reads the socket into (used under _conn_lock)

    @classmethod
    def for_store(cls, store: FeatureStore, reads, entity_key: str) -> "RedisReader | None":
        """A reader for `reads` ([(view, features)]), or None when the key layout is not Feast's int64 one."""
        layout = int_key_layout(store.config, entity_key)
        if layout is None or store.config.online_store.redis_type != RedisType.redis:
            return None  # another key layout, or a cluster (keys on several nodes): Feast's own read
        views, fields = [], []
        for view, feats in reads:
            name = view_name(view, store.config)
            views.append(_ViewRead(view.name, list(feats), ttl_seconds(view), len(fields)))
            fields += [feature_field(name, f) for f in feats] + [ts_field(name)]
        return cls(store_client(store), layout, views, fields)

    def read(self, customer_ids: list[int], now_s: float, into: dict[str, list[Any]]) -> dict[str, list[float]]:
        """Put each view's features (one value per customer, None where missing) into `into`;
        return per view the event time (Unix s) of the row used, 0.0 where none.

        A row is dropped, as offline retrieval drops it, when event time + TTL < `now_s`.
        """
        keys = [self.key_layout.key(c) for c in customer_ids]
        replies = self._hmget(keys)
        columns = list(zip(*replies)) if replies else [()] * len(self.fields)  # one per field, customers in order
        view_ts = {}
        for v in self.views:
            ts = events_seconds(columns[v.start + len(v.features)])
            if v.ttl_s:
                ts = [t if t + v.ttl_s >= now_s else 0.0 for t in ts]
            gone = [i for i, t in enumerate(ts) if not t]  # no row, or past the TTL: every feature None
            for j, name in enumerate(v.features):
                raws = columns[v.start + j]
                if gone:  # read as absent, not decoded only to be dropped
                    raws = list(raws)
                    for i in gone:
                        raws[i] = None
                into[name] = python_values(raws)
            view_ts[v.name] = ts
        return view_ts

    def _hmget(self, keys: list[bytes]) -> list[list]:
        """`HMGET key fields` for each key, pipelined on a connection this reader keeps, with the
        client's own retry policy.

        redis-py's own ways cost more than the read. Its pipeline packs each command and
        handles each reply in Python; a Lua script running the HMGETs inside Redis (this
        reader's earlier way) costs Redis more CPU than the plain commands and blocks it
        while it runs; `client.hmget` checks a connection out of the pool, polls it for stray
        bytes and wraps the command in retry, deprecation and bookkeeping layers (~70 us of CPU
        against ~35 here for one customer). Measured here for 100 customers, wall time a read
        (Redis's CPU): pipeline 1.20 ms (0.46), script 0.91 ms (0.71), this 0.59 ms (0.46).
        The commands are packed from the fields' bytes made once (`_resp_head`, `_resp_tail`;
        tests/test_online.py checks them against redis-py's packer); Redis runs pipelined
        commands one at a time, so other clients get their turn during a read of 1,000.
        The replies are parsed by `_replies`, not one `read_response` each.

        As the client does, a connection that failed in any way (a timeout, an error reply) is
        closed before anything else is sent on it, so a late or unread reply is never read as
        the next one's. A connection error (not a timeout) is then tried once more through the
        client: a connection Redis closed while it was idle (its `timeout`) shows only when
        used, where the pool's check would have replaced it. A second thread arriving while
        this one reads uses the client too.
        """
        if not self._conn_lock.acquire(blocking=False):
            return self._hmget_via_client(keys)
        conn = self._conn
        try:
            head, tail = self._resp_head, self._resp_tail
            packed = b"".join([b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, tail) for k in keys])

            def send_and_read() -> list[list]:
                conn.send_packed_command([packed])  # connects first when it is not connected
                return self._replies(conn, len(keys))

            retry = self.client.get_retry() or Retry(NoBackoff(), 0)
            try:
                return retry.call_with_retry(send_and_read, lambda _: conn.disconnect())  # each failure closes it
            except redis.ConnectionError:
                return self._hmget_via_client(keys)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self._conn_lock.release()

    def _replies(self, conn, n: int) -> list[list]:
        """The next `n` replies on `conn`, parsed by a hiredis reader of this read's own.

        redis-py's `read_response` (the earlier way) runs several layers of Python a
        reply (error-message set-up, push-notification and health-check bookkeeping): for 100
        replies ~0.1 ms hot and ~0.15-0.2 ms on a CPU that was idle (measured in process,
        2026-12-06). Here the bytes are read off the connection's socket as they come and
        hiredis (the parser redis-py uses) cuts them into replies. Errors are redis-py's:
        an error reply raises its ResponseError, a timeout its TimeoutError, a closed or
        broken socket its ConnectionError, so the retry in `_hmget` sees what it always saw.
        """
        sock, buf = conn._sock, self._buf  # redis-py's socket of this connection, TLS or not
        reader = hiredis.Reader(protocolError=redis.InvalidResponse, replyError=redis.ResponseError, notEnoughData=_MORE)
        replies: list = []
        try:
            while len(replies) < n:
                got = sock.recv_into(buf)
                if not got:
                    raise redis.ConnectionError("the Redis server closed the connection")
                reader.feed(buf, 0, got)
                reply = reader.gets()
                while reply is not _MORE:
                    replies.append(reply)
                    reply = reader.gets()
        except socket.timeout as exc:
            raise redis.TimeoutError("Timeout reading from the Redis server") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error while reading from the Redis server: {exc}") from exc
        if len(replies) > n:
            raise redis.InvalidResponse(f"{len(replies)} replies to {n} commands")
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def _hmget_via_client(self, keys: list[bytes]) -> list[list]:
        """The same replies through redis-py's client and its pool."""
        if len(keys) == 1:
            return [self.client.hmget(keys[0], self.fields)]
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, self.fields)
            return pipe.execute()


class FeatureLookup:
    """A FeatureService resolved once at start-up; `lookup` runs per request."""

    def __init__(self, store: FeatureStore, service_name: str, entity_key: str = "customer_id"):
        contract = resolve(store, service_name)
        self.contract = contract
        self.store = store
        self.entity_key = entity_key
        self.names = contract.features
        self.odfvs = contract.odfvs
        self.service = store.get_feature_service(service_name)
        self.view_features = features_to_read(self.service, self.odfvs)
        self.refs = [f"{view}:{f}" for view, feats in self.view_features.items() for f in feats]
        views = {v.name: v for v in contract.views}
        self.reads = [(views[name], feats) for name, feats in self.view_features.items()]
        check_servable(self.reads, self.odfvs, entity_key)
        self.reader = RedisReader.for_store(store, self.reads, entity_key) if _shortcut_is_exact(self.reads, self.odfvs) else None

    def lookup(self, customer_ids: list[int], now: datetime) -> Lookup:
        """Features at request time `now` (timezone-aware): TTLs and `as_of` both relative to it."""
        return self._fast(customer_ids, now) if self.reader is not None else self.via_feature_service(customer_ids, now)

    def _fast(self, customer_ids: list[int], now: datetime) -> Lookup:
        t0 = time.perf_counter()
        n = len(customer_ids)
        values: dict[str, list[Any]] = {self.entity_key: customer_ids, REQUEST_TIME: [now] * n}
        view_ts = self.reader.read(customer_ids, now.timestamp(), values)
        t1 = time.perf_counter()
        # Feast decorates transform_dict with typeguard's @typechecked: its argument and result
        # checks cost ~85 us a request (measured here) and change no value; the inputs are built above
        with suppress_type_checks():
            for odfv in self.odfvs:
                values.update(odfv.transform_dict(self._odfv_inputs(odfv, values)))
        t2 = time.perf_counter()
        return Lookup({name: values[name] for name in self.names}, self.contract.found(values).tolist(), view_ts, t1 - t0, t2 - t1)

    def _odfv_inputs(self, odfv: OnDemandFeatureView, values: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """What Feast hands the view: join key, request data, features of its declared sources."""
        inputs = {self.entity_key: values[self.entity_key], REQUEST_TIME: values[REQUEST_TIME]}
        for src in odfv.source_feature_view_projections.values():
            for f in src.features:
                inputs[f.name] = values[f.name]
        return inputs

    def via_feature_service(self, customer_ids: list[int], now: datetime) -> Lookup:
        """The same features by asking Feast for the whole FeatureService (the reference path)."""
        t0 = time.perf_counter()
        n = len(customer_ids)
        with read_time(now):
            raw = self.store.get_online_features(
                features=self.service, entity_rows={self.entity_key: customer_ids, REQUEST_TIME: [now] * n}
            ).to_dict(include_event_timestamps=True)
        t1 = time.perf_counter()
        # event times of the views the service names directly (an on-demand view's own are 0)
        view_ts = {}
        for proj in self.service.feature_view_projections:
            if proj.name in self.view_features and proj.features:
                view_ts[proj.name] = raw[proj.features[0].name + TS_SUFFIX]
        return Lookup({name: raw[name] for name in self.names}, self.contract.found(raw).tolist(), view_ts, t1 - t0, 0.0)


def features_to_read(service, odfvs: list[OnDemandFeatureView]) -> dict[str, list[str]]:
    """Per feature view, the features to read: the service's own and every on-demand view's inputs."""
    wanted: dict[str, dict[str, None]] = {}
    odfv_names = {o.name for o in odfvs}
    for proj in service.feature_view_projections:
        if proj.name not in odfv_names:
            wanted.setdefault(proj.name, {}).update(dict.fromkeys(f.name for f in proj.features))
    for odfv in odfvs:
        for src in odfv.source_feature_view_projections.values():
            wanted.setdefault(src.name, {}).update(dict.fromkeys(f.name for f in src.features))
    return {view: list(feats) for view, feats in wanted.items()}


def check_servable(reads, odfvs: list[OnDemandFeatureView], entity_key: str) -> None:
    """Refuse at start-up what a request could not supply: other join keys, other request data."""
    for view, _ in reads:
        join_keys = [(c.name, c.dtype.to_value_type()) for c in view.entity_columns]
        if join_keys != [(entity_key, ValueType.INT64)]:
            raise ValueError(f"view {view.name!r} is keyed by {join_keys}; the service reads views keyed by {entity_key} (int64) only")
    for odfv in odfvs:
        extra = [f.name for rs in odfv.source_request_sources.values() for f in rs.schema if f.name != REQUEST_TIME]
        if extra:
            raise ValueError(
                f"on-demand view {odfv.name!r} needs request data {extra} the service cannot supply; "
                f"it only knows the request time ({REQUEST_TIME!r})"
            )


_UUID_TYPES = {ValueType.UUID, ValueType.TIME_UUID, ValueType.UUID_LIST, ValueType.TIME_UUID_LIST, ValueType.UUID_SET, ValueType.TIME_UUID_SET}


def _shortcut_is_exact(reads, odfvs: list[OnDemandFeatureView]) -> bool:
    """Whether the two-step lookup computes exactly what Feast's get_online_features would.

    Feast 0.67 computes a python-mode view without aggregations or stored values with
    `transform_dict` on the read's values; and `python_value` equals Feast's conversion for every
    type except UUIDs stored as strings (converted by a type hint).
    """
    uuids = [f for view, feats in reads for f in view.features if f.name in feats and f.dtype.to_value_type() in _UUID_TYPES]
    return not uuids and all(o.mode == "python" and not o.write_to_online_store and not o.aggregations for o in odfvs)
