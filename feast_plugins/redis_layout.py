"""Feast's Redis layout for feature views keyed by one int64 join key: keys, fields, values.

Feast 0.67's Redis online store keeps every view of an entity in one hash:

    key    serialize_entity_key(entity) + project           (helpers._redis_key)
    field  mmh3("<view>:<feature>") -> ValueProto bytes     (helpers._mmh3)
    field  "_ts:<view>"             -> protobuf Timestamp   (the row's event time)

The materialization engine writes this layout and the service reads it without Feast's
per-call machinery, so both need it; neither restates it. The key's byte layout is found by
asking Feast's own `_redis_key` and checked on several values; field names come from Feast's
`_mmh3` and `_versioned_fv_name`; values are decoded by protobuf and Feast's own
`feast_value_type_to_python_type` (scalars, lists and timestamps as it decodes them, see `_decode`). tests/test_materialize.py (byte for byte against Feast's
writer) and tests/test_online.py (value for value against `get_online_features`) hold both
directions to Feast.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import repeat
from typing import Any

from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.type_map import NULL_TIMESTAMP_INT_VALUE, feast_value_type_to_python_type
from google.protobuf.timestamp_pb2 import Timestamp

INT64 = struct.Struct("<q")


@dataclass(frozen=True)
class KeyLayout:
    """Redis key of an int64 entity = prefix + 8 little-endian bytes + suffix."""

    prefix: bytes
    suffix: bytes

    def key(self, entity_id: int) -> bytes:
        return self.prefix + INT64.pack(entity_id) + self.suffix


def int_key_layout(config: RepoConfig, join_key: str) -> KeyLayout | None:
    """The layout of Feast's own Redis key for `join_key` (int64), or None when it is not
    prefix + int64 + suffix (another serialization version: then Feast's code path is used).

    Derived from Feast's `_redis_key` rather than restated, so a Feast change that moves bytes
    is detected here instead of copied wrong.
    """

    def key(v: int) -> bytes:
        entity = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(int64_val=v)])
        return _redis_key(config.project, entity, entity_key_serialization_version=config.entity_key_serialization_version)

    probe = 0x0102030405060708
    at = key(probe).find(INT64.pack(probe))
    if at < 0:
        return None
    zero = key(0)
    layout = KeyLayout(zero[:at], zero[at + 8:])
    for v in (1, -2, 2**62 + 12345, probe):
        if key(v) != layout.key(v):
            return None
    return layout


def view_name(view, config: RepoConfig) -> str:
    """The name Feast uses for a view in Redis (with a version suffix when versioning is on)."""
    return _versioned_fv_name(view, config)


def feature_field(view_name_: str, feature: str) -> bytes:
    """The hash field holding a feature's value."""
    return _mmh3(f"{view_name_}:{feature}")


def ts_field(view_name_: str) -> bytes:
    """The hash field holding a view's event time."""
    return f"_ts:{view_name_}".encode()


# Oneofs that feast_value_type_to_python_type returns unchanged (none of its branches touch them
# without a UUID type hint), and lists it returns as `list(value.val)`; timestamps it turns into
# UTC datetimes. The three together are most of a customer's values and are decoded here as
# Feast does, ~1.5 us faster a list or timestamp (measured here: 2.3 -> 0.8 us, 1.8 -> 0.5 us).
# Everything else (sets, maps, JSON, decimals, ...) goes through Feast.
# tests/test_materialize.py compares both for every kind.
_AS_IS = frozenset({"string_val", "int64_val", "int32_val", "double_val", "float_val", "bool_val", "bytes_val"})
_LISTS = frozenset(k.replace("_val", "_list_val") for k in _AS_IS)
_parse_value = ValueProto.FromString
_parse_timestamp = Timestamp.FromString


_IMMUTABLE = (str, int, float, bool, bytes, datetime)
_decoded: dict[bytes, Any] = {}  # stored bytes -> Python value, for values that repeat
_DECODED_MAX = 1 << 16


def python_value(raw: bytes | None) -> Any:
    """A stored value as Feast's `OnlineResponse.to_dict` gives it: None when absent or empty.

    Decoded values are remembered by their bytes (plans, regions, small counts repeat across
    customers; a hit costs ~0.1 us against ~0.9 us to decode). Only immutable values are kept,
    so callers can never change a cached one; the cache is emptied when it reaches 65,536.
    """
    if not raw:
        return None
    try:
        return _decoded[raw]
    except KeyError:
        pass
    value = _decode(raw)
    if isinstance(value, _IMMUTABLE):
        if len(_decoded) >= _DECODED_MAX:
            _decoded.clear()
        _decoded[raw] = value
    return value


def python_values(raws: Sequence[bytes | None]) -> list[Any]:
    """`python_value` of each of `raws`, a column of one feature at a time.

    The remembered values are looked up for the whole column in one `map` (C, ~0.02 us a
    value); only the values not remembered yet go through `python_value` (~0.17 us a call for
    a remembered one: ~0.3 ms of a 100-customer read, measured here).
    """
    values = list(map(_decoded.get, raws))  # None: absent, empty, or not remembered yet
    if None in values:
        for i, value in enumerate(values):
            if value is None and raws[i]:
                values[i] = python_value(raws[i])
    return values


def _decode(raw: bytes) -> Any:
    value = _parse_value(raw)
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _AS_IS:
        return getattr(value, kind)
    if kind in _LISTS:
        return list(getattr(value, kind).val)
    if kind == "unix_timestamp_val":
        seconds = value.unix_timestamp_val
        return None if seconds == NULL_TIMESTAMP_INT_VALUE else datetime.fromtimestamp(seconds, tz=timezone.utc)
    return feast_value_type_to_python_type(value)


def event_seconds(raw: bytes | None) -> float:
    """A view's stored event time in Unix seconds (Feast: seconds + nanos / 1e9); 0.0 when absent."""
    if not raw:
        return 0.0
    ts = _parse_timestamp(raw)
    return ts.seconds + ts.nanos / 1_000_000_000.0


_seconds: dict[bytes, float] = {}  # stored event times -> Unix seconds (rows of a day's run share theirs)


def events_seconds(raws: Sequence[bytes | None]) -> list[float]:
    """`event_seconds` of each of `raws` (a view's `_ts` field for a column of customers),
    remembered as `python_values` remembers values."""
    seconds = list(map(_seconds.get, raws, repeat(0.0)))
    if 0.0 in seconds:
        for i, s in enumerate(seconds):
            if not s and raws[i]:
                if len(_seconds) >= _DECODED_MAX:
                    _seconds.clear()
                seconds[i] = _seconds[raws[i]] = event_seconds(raws[i])
    return seconds
