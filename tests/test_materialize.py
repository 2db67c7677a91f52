"""The skewless materialization engine against Feast's own, on real Redis servers and DuckDB.

What must hold for the engine to replace Feast's in `feature_store.yaml`:
- Feast's readers cannot tell: for the same data, every Redis key, field and value is the byte
  string Feast's stock engine writes, and `get_online_features` returns the same;
- newer wins: an older or overlapping window never replaces a newer value;
- an interrupted run followed by a re-run leaves Redis exactly as one clean run does;
- late-arriving rows (created after the window they belong to was materialized) reach Redis on
  the next `materialize-incremental`, where Feast's engine loses them;
- `skewless materialize` reports what it did and fails on bad input with one line.
Each test writes to its own throwaway redis-server, never the session one other tests read.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from feast.infra.online_stores.redis import RedisOnlineStore
from conftest import copy_repo, feast_apply

from feast_plugins.materialize_engine import SkewlessRedisEngineConfig, join_rows, plan_view, value_proto, write_view
from feast_plugins.redis_server import throwaway_redis
from synthetic.generate import ACTIVITY_FILE, ACTIVITY_SCHEMA, LABEL_SCHEMA, LABELS_FILE, PROFILE_SCHEMA, PROFILES_FILE
from skewless.store import REDIS_ENV, open_store

UTC = timezone.utc
T0 = datetime(2026, 6, 1, tzinfo=UTC)
EVERYTHING = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))  # a window holding all generated rows
NULL = object()  # an explicit null `created` in profile_row
PROFILE_FEATURES = ["plan", "region", "seats", "monthly_fee", "signup_date", "status"]
DAILY = ["customer_profile", "customer_activity"]  # the views with sources here (Feast's engine fails on an empty directory)
ACTIVITY_FEATURES = [f for f in ACTIVITY_SCHEMA.names if f not in ("customer_id", "event_timestamp", "created")]


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def open_on(repo, endpoint, monkeypatch, engine: str | None = None):
    """The repo's store writing to `endpoint`; `engine="local"` swaps in Feast's stock engine."""
    monkeypatch.setenv(REDIS_ENV, endpoint.feast)
    store = open_store(repo)
    if engine is not None:
        store.config.batch_engine_config = engine
    return store


def redis_dump(endpoint) -> dict[bytes, dict[bytes, bytes]]:
    """Every feature hash (the engine's watermarks, which Feast's engine does not write, left out)."""
    client = endpoint.client(timeout=30)
    return {key: client.hgetall(key) for key in client.scan_iter(count=1000) if not key.startswith(b"skewless:watermark:")}


def online(store, ids) -> dict:
    """What Feast's stock Redis reader returns (every value Redis holds, however old): these tests
    are about what was written, so the repo's TTL store (which hides expired rows) is bypassed."""
    refs = [f"customer_profile:{f}" for f in PROFILE_FEATURES] + [f"customer_activity:{f}" for f in ACTIVITY_FEATURES]
    provider = store._get_provider()
    ttl_store, provider._online_store = provider.online_store, RedisOnlineStore()
    try:
        return store.get_online_features(features=refs, entity_rows=[{"customer_id": int(i)} for i in ids]).to_dict()
    finally:
        provider._online_store = ttl_store


def activity_row(cid, event, created, logins_7d, **extra):
    row = {c: 0 for c in ACTIVITY_SCHEMA.names}
    row.update(customer_id=cid, event_timestamp=event, created=created, logins_7d=logins_7d, logins_30d=logins_7d * 3,
               active_minutes_7d=1.5, active_minutes_30d=4.5, spend_7d=2.0, spend_30d=6.0, last_active_at=event)
    row.update(extra)
    return row


def profile_row(cid, event, created=None, **extra):  # created: the event time unless given (NULL: null)
    row = dict(customer_id=cid, event_timestamp=event, created=None if created is NULL else created or event, plan="pro", region="na", seats=2,
               monthly_fee=50.0, signup_date=day(-100), status="active")
    row.update(extra)
    return row


def write_sources(repo, profiles, activity) -> None:
    pq.write_table(pa.Table.from_pylist(profiles, schema=PROFILE_SCHEMA), repo / "data" / PROFILES_FILE)
    pq.write_table(pa.Table.from_pylist(activity, schema=ACTIVITY_SCHEMA), repo / "data" / ACTIVITY_FILE)
    pq.write_table(LABEL_SCHEMA.empty_table(), repo / "data" / LABELS_FILE)


# Every awkward value the encoders meet, on customers 100001.. next to the 1k generated ones:
# nulls of each type, NaN, -0.0, empty and non-ASCII strings, a null timestamp among valid ones,
# sub-second times, negative and large integers, same-event-time ties broken by `created` (a
# null `created` loses; a full tie goes to the first row), a row too old for any window.
A, B, C, D, E, F = range(100_001, 100_007)
EDGE_PROFILES = [
    profile_row(A, day(-50), region=None, seats=None, monthly_fee=float("nan"), signup_date=None),
    profile_row(A, day(-10), plan="énterprise ✓", region="", seats=2**40, monthly_fee=-0.0, status="active"),
    profile_row(B, day(-20).replace(microsecond=123456), seats=-3, monthly_fee=1e300),
    profile_row(C, day(-5), created=day(-5), plan="basic"),
    profile_row(C, day(-5), created=day(-4), plan="business"),  # same event time, created later: wins
    profile_row(D, day(-3), created=day(-3), plan="basic"),
    profile_row(D, day(-3), created=NULL, plan="pro"),  # a null created loses the tie
    profile_row(F, day(-2), plan="first"),  # a full tie (event time and created): the first row wins
    profile_row(F, day(-2), plan="second"),
]
EDGE_ACTIVITY = [
    activity_row(A, day(1), day(1), 7, last_active_at=day(0.5).replace(microsecond=999999)),
    activity_row(A, day(2), day(2.5), 9, active_minutes_7d=None, spend_30d=float("nan")),
    activity_row(B, day(3).replace(microsecond=1), day(3), -5, payment_failures_30d=2**50, last_active_at=None),
    activity_row(C, day(4), day(4), 0, spend_7d=-0.0),
    activity_row(E, datetime(1999, 1, 1, tzinfo=UTC), datetime(1999, 1, 1, tzinfo=UTC), 1),  # before the window
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, small_repo, redis_endpoint):
    """The 1k generated customers plus the edge cases above, in a private applied copy
    (materializing records windows in the registry, so not the shared small_repo)."""
    repo = copy_repo(tmp_path_factory.mktemp("materialize") / "feature_repo")
    data = small_repo / "data"
    profiles = pa.concat_tables([pq.read_table(data / PROFILES_FILE), pa.Table.from_pylist(EDGE_PROFILES, schema=PROFILE_SCHEMA)])
    activity = pa.concat_tables([pq.read_table(data / ACTIVITY_FILE), pa.Table.from_pylist(EDGE_ACTIVITY, schema=ACTIVITY_SCHEMA)])
    pq.write_table(profiles, repo / "data" / PROFILES_FILE)
    pq.write_table(activity, repo / "data" / ACTIVITY_FILE)
    shutil.copy(data / LABELS_FILE, repo / "data")
    assert feast_apply(repo, redis_endpoint).returncode == 0
    return repo


def test_feature_repo_runs_the_skewless_engine(repo, monkeypatch):
    with throwaway_redis() as endpoint:
        store = open_on(repo, endpoint, monkeypatch)
        assert type(store._get_provider().batch_engine).__name__ == "SkewlessRedisEngine"
        for view in store.list_feature_views():
            assert not isinstance(plan_view(store.config, view), str), view.name  # no silent fallback


def test_same_redis_bytes_and_online_features_as_feast(repo, monkeypatch):
    with throwaway_redis() as stock_redis, throwaway_redis() as our_redis:
        stock = open_on(repo, stock_redis, monkeypatch, engine="local")
        stock.materialize(*EVERYTHING, feature_views=DAILY)
        ours = open_on(repo, our_redis, monkeypatch)
        ours.materialize(*EVERYTHING)
        expected, got = redis_dump(stock_redis), redis_dump(our_redis)
        ids = pq.read_table(repo / "data" / PROFILES_FILE, columns=["customer_id"]).column(0).unique().to_pylist() + [E, 999_999]
        assert online(ours, ids) == online(stock, ids)
    assert len(got) == len(expected) > 900
    assert got == expected


def test_encoders_match_feast_value_by_value():
    """Column-wise protobuf bytes equal Feast's per-value conversion on every awkward value."""
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    ts = pa.timestamp("us", tz="UTC")
    columns = {
        ValueType.STRING: pa.array(["basic", None, "", "ünïcødé", "x" * 300]),
        ValueType.BYTES: pa.array([b"\x00\x01", None, b"", b"\xff" * 200, b"z"]),
        ValueType.INT64: pa.array([0, None, -1, 2**62, 127]),
        ValueType.INT32: pa.array([0, None, -1, 2**30, 128], pa.int32()),
        ValueType.DOUBLE: pa.array([0.0, None, float("nan"), -0.0, 1e300]),
        ValueType.FLOAT: pa.array([0.0, None, float("nan"), -1.5, 3.25], pa.float32()),
        ValueType.BOOL: pa.array([True, None, False, True, False]),
        ValueType.UNIX_TIMESTAMP: pa.array([0, None, 1_790_000_000_123_456, -1_500_000, 999_999], ts),
        ValueType.INT64_LIST: pa.array([[1, 2, 3], None, [], [2**62, -5], [0]], pa.list_(pa.int64())),
    }
    for value_type, arr in columns.items():
        data, offsets = join_rows(value_proto(arr, value_type), len(arr))
        ours = [bytes(data[offsets[i]:offsets[i + 1]]) for i in range(len(arr))]
        feast = [v.SerializeToString() for v in python_values_to_proto_values(arr.to_numpy(zero_copy_only=False), value_type)]
        assert ours == feast, value_type


def test_decoded_values_are_feasts_for_every_kind():
    """feast_plugins/redis_layout.py:python_value decodes some kinds itself (scalars, lists,
    timestamps): value and type equal Feast's own conversion, for those and for the kinds it
    hands to Feast, on awkward values (empty lists, the null timestamp, negative times)."""
    from feast.protos.feast.types import Value_pb2 as V
    from feast.type_map import NULL_TIMESTAMP_INT_VALUE, feast_value_type_to_python_type

    from feast_plugins.redis_layout import python_value, python_values

    values = [
        V.Value(string_val="ünïcødé"), V.Value(string_val=""), V.Value(bytes_val=b"\x00\xff"), V.Value(int64_val=-(2**63)),
        V.Value(int32_val=7), V.Value(double_val=float("inf")), V.Value(float_val=-1.5), V.Value(bool_val=False),
        V.Value(unix_timestamp_val=1_790_000_000), V.Value(unix_timestamp_val=-1_500), V.Value(unix_timestamp_val=0),
        V.Value(unix_timestamp_val=NULL_TIMESTAMP_INT_VALUE),
        V.Value(int64_list_val=V.Int64List(val=[1, -2, 2**62])), V.Value(int64_list_val=V.Int64List()),
        V.Value(int32_list_val=V.Int32List(val=[3])), V.Value(double_list_val=V.DoubleList(val=[0.5, float("nan")])),
        V.Value(float_list_val=V.FloatList(val=[0.25])), V.Value(string_list_val=V.StringList(val=["a", ""])),
        V.Value(bool_list_val=V.BoolList(val=[True, False])), V.Value(bytes_list_val=V.BytesList(val=[b"x"])),
        V.Value(unix_timestamp_list_val=V.Int64List(val=[0, NULL_TIMESTAMP_INT_VALUE])),
        V.Value(int64_set_val=V.Int64Set(val=[1, 2])), V.Value(json_val='{"a": [1, 2]}'), V.Value(decimal_val="1.10"),
        V.Value(),
    ]
    raws = [value.SerializeToString() for value in values]
    for value, raw in zip(values, raws):
        expected = feast_value_type_to_python_type(V.Value.FromString(raw))
        for got in (python_value(raw), python_value(raw)):  # decoded, then (for immutable values) remembered
            assert repr(got) == repr(expected) and type(got) is type(expected), value
            if isinstance(got, list):
                assert [type(x) for x in got] == [type(x) for x in expected], value
    # a column at a time (what the service reads), absent and empty fields among them
    column = [None, b"", *raws, *raws]
    assert repr(python_values(column)) == repr([python_value(raw) for raw in column])
    assert [type(v) for v in python_values(column)] == [type(python_value(raw)) for raw in column]


def test_event_times_a_column_at_a_time():
    """feast_plugins/redis_layout.py:events_seconds is event_seconds for each, remembered or not."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from feast_plugins.redis_layout import event_seconds, events_seconds

    raws = [Timestamp(seconds=s, nanos=n).SerializeToString() for s, n in ((1_790_000_000, 0), (1_790_000_001, 500_000_000), (-5, 0))]
    column = [None, b"", *raws, raws[0], Timestamp().SerializeToString()]
    for _ in range(2):  # decoded, then remembered
        assert events_seconds(column) == [event_seconds(raw) for raw in column] == [0.0, 0.0, 1_790_000_000.0, 1_790_000_001.5, -5.0, 1_790_000_000.0, 0.0]


def test_newer_wins_whatever_the_order_of_overlapping_windows(repo, monkeypatch):
    with throwaway_redis() as newer_last, throwaway_redis() as newer_first:
        a = open_on(repo, newer_last, monkeypatch)
        a.materialize(day(-60), day(1.5))  # customer A: logins 7 (day 1)
        assert online(a, [A])["logins_7d"] == [7]
        a.materialize(day(-60), day(10))  # overlapping, newer: logins 9 (day 2)
        b = open_on(repo, newer_first, monkeypatch)
        b.materialize(day(-60), day(10))
        newest = redis_dump(newer_first)
        engine = b._get_provider().batch_engine
        b.materialize(day(-60), day(1.5))  # older, overlapping windows: nothing may change
        b.materialize(day(-60), day(-20))
        assert redis_dump(newer_first) == newest == redis_dump(newer_last)
        assert online(b, [A])["logins_7d"] == [9] and online(b, [A])["plan"] == ["énterprise ✓"]
        assert sum(r.kept for r in engine.runs[-4:]) > 0  # older values were sent, and refused by Redis


def test_interrupted_run_then_rerun_equals_one_clean_run(repo, monkeypatch):
    class Interrupted(KeyboardInterrupt):
        pass

    def interrupt(rows):
        raise Interrupted

    small_batches = SkewlessRedisEngineConfig(batch_rows=100, keys_per_call=10)
    with throwaway_redis() as interrupted, throwaway_redis() as clean:
        store = open_on(repo, interrupted, monkeypatch)
        view = store.get_feature_view("customer_activity")
        client = store._get_provider().online_store._get_client(store.config.online_store)
        with pytest.raises(Interrupted):
            write_view(plan_view(store.config, view), client, *EVERYTHING, small_batches, on_batch=interrupt)
        partial = interrupted.client().dbsize()
        assert 0 < partial < 500  # the first batches landed, the rest did not
        store.materialize(*EVERYTHING)  # the re-run
        open_on(repo, clean, monkeypatch).materialize(*EVERYTHING)
        assert redis_dump(interrupted) == redis_dump(clean)


def write_with_pandas(repo, profiles, activity, zone: str | None) -> None:
    """The sources as a user's own `DataFrame.to_parquet` writes them: nanosecond timestamps, tz-aware or naive."""
    for rows, name in ((profiles, PROFILES_FILE), (activity, ACTIVITY_FILE)):
        frame = pd.DataFrame(rows)
        for column in frame.columns:
            if str(frame[column].dtype).startswith("datetime64"):
                frame[column] = frame[column].astype("datetime64[ns, UTC]")
                if zone is None:
                    frame[column] = frame[column].dt.tz_localize(None)
        frame.to_parquet(repo / "data" / name)
    pq.write_table(LABEL_SCHEMA.empty_table(), repo / "data" / LABELS_FILE)


@pytest.mark.parametrize("zone", [None, "UTC"])
def test_parquet_written_by_plain_pandas_materializes_as_microsecond_sources_do(tmp_path, redis_endpoint, monkeypatch, zone):
    """Naive and tz-aware nanosecond timestamps give the same Redis bytes as the microsecond
    sources skewless generates (and, for naive ones, as Feast's own engine, which refuses tz-aware ns)."""
    profiles = [profile_row(c, day(-5 - c)) for c in (1, 2, 3)] + [profile_row(3, day(-2), plan="business")]
    activity = [activity_row(c, day(-1), day(-1), c, last_active_at=day(-1.5)) for c in (1, 2)]
    ns_repo, us_repo = copy_repo(tmp_path / "ns" / "feature_repo"), copy_repo(tmp_path / "us" / "feature_repo")
    write_with_pandas(ns_repo, profiles, activity, zone)
    write_sources(us_repo, profiles, activity)
    for r in (ns_repo, us_repo):
        assert feast_apply(r, redis_endpoint).returncode == 0
    with throwaway_redis() as ns_redis, throwaway_redis() as us_redis, throwaway_redis() as stock_redis:
        open_on(ns_repo, ns_redis, monkeypatch).materialize(*EVERYTHING)
        open_on(us_repo, us_redis, monkeypatch).materialize(*EVERYTHING)
        assert redis_dump(ns_redis) == redis_dump(us_redis) and len(redis_dump(ns_redis)) == 3
        if zone is None:
            open_on(ns_repo, stock_redis, monkeypatch, engine="local").materialize(*EVERYTHING, feature_views=DAILY)
            assert redis_dump(stock_redis) == redis_dump(ns_redis)


@pytest.fixture()
def late_repo(tmp_path, redis_endpoint):
    """Three customers with a row 5 days ago; materialize-incremental's first window is
    relative to the wall clock (now - TTL), so these times are too."""
    now = datetime.now(UTC).replace(microsecond=0)
    repo = copy_repo(tmp_path / "feature_repo")
    profiles = [profile_row(c, now - timedelta(days=50)) for c in (1, 2, 3)]
    activity = [activity_row(c, now - timedelta(days=5), now - timedelta(days=5), 1) for c in (1, 2, 3)]
    write_sources(repo, profiles, activity)
    assert feast_apply(repo, redis_endpoint).returncode == 0
    return repo, now, profiles, activity


def test_late_arriving_row_reaches_redis_on_the_next_incremental_run(late_repo, monkeypatch):
    repo, now, profiles, activity = late_repo
    t1, t2 = now - timedelta(days=3), now
    late = t1 + timedelta(days=1)  # when the late rows arrive: after T1 was materialized
    with throwaway_redis() as ours_redis, throwaway_redis() as stock_redis:
        ours = open_on(repo, ours_redis, monkeypatch)
        ours.materialize_incremental(t1)
        stock = open_on(repo, stock_redis, monkeypatch, engine="local")
        stock.materialize(now - timedelta(days=30), t1, feature_views=DAILY)  # the same first window, by Feast's engine
        assert online(ours, [1, 2, 3])["logins_7d"] == [1, 1, 1]
        write_sources(repo, profiles, activity + [
            activity_row(1, t1 - timedelta(days=1), late, 9),  # late, and newer than Redis's value
            activity_row(2, now - timedelta(days=6), late, 7),  # late, but older than Redis's value
            activity_row(3, t1 - timedelta(days=1), late, 8),  # late, but a newer row exists:
            activity_row(3, now - timedelta(days=1), now - timedelta(days=1), 4),
        ])
        ours.materialize_incremental(t2)  # what `cd feature_repo && feast materialize-incremental` runs
        stock.materialize(t1, t2, feature_views=DAILY)  # Feast's engine, the same second window
        assert online(ours, [1, 2, 3])["logins_7d"] == [9, 1, 4]
        assert online(stock, [1, 2, 3])["logins_7d"] == [1, 1, 4]  # the bug this fixes: the late row is lost


def test_cli_materializes_and_summarizes(repo, monkeypatch):
    from skewless.cli import main

    with throwaway_redis() as endpoint:
        monkeypatch.setenv(REDIS_ENV, endpoint.feast)
        monkeypatch.delenv("REDIS_URL", raising=False)
        r = CliRunner().invoke(main, ["materialize", "--end", "2026-11-01T00:00:00Z", "--full", "--repo", str(repo)])
        assert r.exit_code == 0, r.output
        assert endpoint.client().dbsize() > 500
    assert "customer_activity" in r.output and "rows/s" in r.output and "keys written" in r.output


@pytest.mark.parametrize("end", ["yesterday-ish", "2026-13-45", "2099-01-01"])
def test_cli_bad_end_is_one_line_and_nonzero(end, repo):
    from skewless.cli import main

    r = CliRunner().invoke(main, ["materialize", "--end", end, "--repo", str(repo)])
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--end" in lines[0] or "not a time" in lines[0], r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
