"""The ASOF offline store returns what Feast 0.67's own DuckDB store returns, row for row and type
for type (feast_plugins/asof_offline_store.py).

Both stores answer the same `get_historical_features` on the same registry and files: once on
the project's generated data (both feature services, with and without the created filter, full
feature names), and on small sources hypothesis makes up to hit the edges of the rule: ties on
event time broken by `created`, rows exactly at the TTL boundary, rows that arrive late, nulls,
a view with no TTL, duplicate entity rows, several per key, keys with no rows, naive and aware
entity times, nanosecond and microsecond Parquet timestamps. Rows come back in the entity
frame's order from the plug-in and in an order of DuckDB's from Feast, so both are compared
sorted by a row number carried in the entity frame. Two source rows of one key with the same
event time *and* the same `created` have no defined winner in Feast (either may come first), so
the generated sources never hold such a pair with different values.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from feast_plugins import asof_offline_store
from feast_plugins.asof_offline_store import AsofRetrievalJob, with_feast_duckdb
from training.dataset import entity_frame

def both(store: FeatureStore, entity: pd.DataFrame, features, **kwargs) -> tuple[pa.Table, pa.Table]:
    """(plug-in, Feast) results of one retrieval, each sorted by the entity frame's `row`."""
    job = store.get_historical_features(entity_df=entity.copy(), features=features, **kwargs)
    assert isinstance(job, AsofRetrievalJob)
    ours = job.to_arrow()
    feast = with_feast_duckdb(store).get_historical_features(entity_df=entity.copy(), features=features, **kwargs).to_arrow()
    assert ours.column_names == feast.column_names
    assert ours["row"].to_pylist() == entity["row"].tolist()  # the entity frame's order, kept
    return ours, feast.sort_by("row")


def assert_same(ours: pa.Table, feast: pa.Table) -> None:
    assert ours.schema == feast.schema
    pd.testing.assert_frame_equal(ours.to_pandas(), feast.to_pandas(), check_exact=True)


@pytest.mark.parametrize("service", ["churn_v1", "churn_v2"])
def test_the_project_data_gives_feast_own_answer(small_store, service, monkeypatch):
    labels = pd.read_parquet(Path(small_store.repo_path) / "data" / "churn_labels.parquet").head(3000)
    entity = entity_frame(labels).assign(row=range(len(labels)))
    for created_filter in (True, False):
        assert_same(*both(small_store, entity, small_store.get_feature_service(service), filter_by_created_timestamp=created_filter))
    # one time for every customer (a batch at T): the aggregate path, with and without the key filter
    at = labels["event_timestamp"].max()
    batch = pd.DataFrame({"customer_id": labels["customer_id"].unique(), "event_timestamp": at}).assign(as_of=at)
    batch = batch.assign(row=range(len(batch)))
    for semi_join_rows in (0, 50_000):
        monkeypatch.setattr(asof_offline_store, "SEMI_JOIN_ROWS", semi_join_rows)
        assert_same(*both(small_store, batch, small_store.get_feature_service(service), filter_by_created_timestamp=True))
    refs = ["customer_activity:logins_7d", "customer_profile:plan", "customer_derived:tenure_days"]
    ours, feast = both(small_store, entity, refs, full_feature_names=True, filter_by_created_timestamp=True)
    assert "customer_activity__logins_7d" in ours.column_names and "customer_derived__tenure_days" in ours.column_names
    assert_same(ours, feast)


DEFINITIONS = """
from datetime import timedelta
from pathlib import Path
from feast import Entity, FeatureView, Field, FileSource
from feast.types import Int64
from feast.value_type import ValueType

DATA = Path(__file__).parent / "data"
key = Entity(name="key", join_keys=["k"], value_type=ValueType.INT64)
a = FeatureView(name="a", entities=[key], ttl=timedelta(hours=48), schema=[Field(name="x", dtype=Int64)],
                source=FileSource(name="a_src", path=str(DATA / "a.parquet"), timestamp_field="ts", created_timestamp_column="created"))
b = FeatureView(name="b", entities=[key], ttl=timedelta(0), schema=[Field(name="y", dtype=Int64)],
                source=FileSource(name="b_src", path=str(DATA / "b.parquet"), timestamp_field="ts", created_timestamp_column="created"))
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> FeatureStore:
    """Two views over one key: `a` with a 48 h TTL, `b` with none; sources rewritten per example."""
    repo = tmp_path_factory.mktemp("tiny")
    (repo / "data").mkdir()
    (repo / "definitions.py").write_text(DEFINITIONS)
    (repo / "feature_store.yaml").write_text(textwrap.dedent("""\
        project: tiny
        provider: local
        registry: data/registry.db
        offline_store:
          type: feast_plugins.asof_offline_store.AsofDuckDBOfflineStore
        online_store:
          type: sqlite
          path: data/online.db
        entity_key_serialization_version: 3
        """))
    for name, col in (("a", "x"), ("b", "y")):
        write_source(repo / "data" / f"{name}.parquet", col, [], "us")
    feast_cli = Path(sys.executable).with_name("feast")
    applied = subprocess.run([str(feast_cli), "apply"], cwd=repo, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    return FeatureStore(repo_path=str(repo))


T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def write_source(path: Path, column: str, rows: list[tuple], unit: str) -> None:
    """(key, event hour, created hour or None, value or None) rows, timestamps in `unit`."""
    ts_type = pa.timestamp(unit, tz="UTC")
    hours = lambda h: None if h is None else T0 + timedelta(hours=h)  # noqa: E731
    table = pa.table({
        "k": pa.array([r[0] for r in rows], pa.int64()),
        "ts": pa.array([hours(r[1]) for r in rows], ts_type),
        "created": pa.array([hours(r[2]) for r in rows], ts_type),
        column: pa.array([r[3] for r in rows], pa.int64()),
    })
    pq.write_table(table, path, coerce_timestamps=None if unit == "ns" else unit, allow_truncated_timestamps=False)


def source_rows():
    hours = st.integers(0, 40).map(lambda h: 3 * h)  # a coarse grid: ties on event time, rows at the TTL boundary
    row = st.tuples(st.integers(1, 3), hours, st.one_of(st.none(), hours), st.one_of(st.none(), st.integers(-5, 5)))
    # one value per (key, event time, created): Feast's winner among such a pair is undefined
    return st.lists(row, max_size=14).map(lambda rows: list({(k, t, c): (k, t, c, v) for k, t, c, v in rows}.values()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    a_rows=source_rows(),
    b_rows=source_rows(),
    unit=st.sampled_from(["us", "ns"]),
    entity_rows=st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0, 24, 47, 48, 49, 72, 96, 119, 120, 121, 200])), min_size=1, max_size=10),
    aware=st.booleans(),
    created_filter=st.booleans(),
    semi_join_rows=st.sampled_from([0, 50_000]),  # with and without the key filter first
)
# named edges, always run: a tie on event time where one `created` is null (Feast: nulls last);
# a row exactly at the TTL boundary, one an hour past it, and a late row visible only from `created`
@example(a_rows=[(1, 3, None, 1), (1, 3, 6, 2)], b_rows=[(1, 3, None, 1), (1, 3, 6, 2)], unit="us", entity_rows=[(1, 9)], aware=True, created_filter=False, semi_join_rows=0)
@example(a_rows=[(1, 0, 0, 5), (2, 0, 0, 6)], b_rows=[(1, 0, 0, 5)], unit="ns", entity_rows=[(1, 48), (2, 49)], aware=False, created_filter=True, semi_join_rows=0)
@example(a_rows=[(1, 0, 0, 1), (1, 3, 30, 2)], b_rows=[(1, 6, 60, 3), (1, 0, 0, 4)], unit="us", entity_rows=[(1, 24), (1, 47), (1, 72), (1, 24)], aware=True, created_filter=True, semi_join_rows=50_000)
def test_generated_sources_give_feast_own_answer(tiny, a_rows, b_rows, unit, entity_rows, aware, created_filter, semi_join_rows):
    data = Path(tiny.repo_path) / "data"
    write_source(data / "a.parquet", "x", a_rows, unit)
    write_source(data / "b.parquet", "y", b_rows, unit)
    times = [T0 + timedelta(hours=h) for _, h in entity_rows]
    entity = pd.DataFrame({
        "k": [k for k, _ in entity_rows],
        "event_timestamp": pd.to_datetime(times) if aware else pd.to_datetime([t.replace(tzinfo=None) for t in times]),
        "row": range(len(entity_rows)),
    })
    default, asof_offline_store.SEMI_JOIN_ROWS = asof_offline_store.SEMI_JOIN_ROWS, semi_join_rows
    try:
        assert_same(*both(tiny, entity, ["a:x", "b:y"], filter_by_created_timestamp=created_filter))
    finally:
        asof_offline_store.SEMI_JOIN_ROWS = default


@pytest.mark.parametrize("tz", [None, "UTC"])
def test_the_fast_input_conversion_is_pyarrow_own(tz):
    """feast_plugins/on_demand.py hands the on-demand function what `to_pylist` would, value,
    type and tzinfo: repeated instants (converted once each), distinct ones, nulls, all null."""
    from feast_plugins.on_demand import python_values

    base = datetime(2026, 3, 1, 12, 30, 15, 123456)
    repeated = [base + timedelta(days=i % 3) if i % 5 else None for i in range(100)]
    distinct = [base + timedelta(seconds=i) for i in range(100)]
    for values in (repeated, distinct, [None] * 10, [base] * 10):
        column = pa.chunked_array([pa.array(values[:40], pa.timestamp("us", tz=tz)), pa.array(values[40:], pa.timestamp("us", tz=tz))])
        got, want = python_values(column), column.to_pylist()
        assert got == want and [type(v) for v in got] == [type(v) for v in want]
        assert [getattr(v, "tzinfo", None) for v in got] == [getattr(v, "tzinfo", None) for v in want]


def test_the_fast_conversion_of_numbers_and_strings_is_pyarrow_own():
    from feast_plugins.on_demand import python_values

    columns = [
        pa.chunked_array([[1, None, -3], [2**62, None]], pa.int64()),
        pa.chunked_array([[1, 2], [3]], pa.int32()),
        pa.chunked_array([[1.5, None, float("nan")], [-0.0]], pa.float64()),
        pa.chunked_array([[True, None], [False]], pa.bool_()),
        pa.chunked_array([["a", None, ""], ["é"]], pa.string()),
        pa.chunked_array([["a", None, "b"] * 30, ["é"] * 10], pa.string()),
        pa.chunked_array([[None, None]], pa.int64()),
    ]
    for column in columns:
        got, want = python_values(column), column.to_pylist()
        assert repr(got) == repr(want) and [type(v) for v in got] == [type(v) for v in want], column.type


def test_record_batches_are_the_same_rows_in_pieces(small_store):
    labels = pd.read_parquet(Path(small_store.repo_path) / "data" / "churn_labels.parquet").head(1000)
    entity = entity_frame(labels)
    job = small_store.get_historical_features(entity_df=entity, features=small_store.get_feature_service("churn_v1"), filter_by_created_timestamp=True)
    batches = list(job.to_record_batches(rows=300))
    assert len(batches) >= 3 and max(b.num_rows for b in batches) <= 300
    assert pa.Table.from_batches(batches).equals(job.to_arrow())
