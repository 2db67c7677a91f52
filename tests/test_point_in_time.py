"""Historical retrieval on hand-made rows: as-of joins, TTL, late-arriving rows, derived features.

The data is tiny and explicit so every expected value can be read off the table below.
What Feast 0.67 does with `created` (measured here): by default it only breaks ties between rows
with the same event_timestamp (the later `created` wins) and does NOT hide a row whose `created`
is after the entity row's time, so a late-arriving row would leak into the past. With
`filter_by_created_timestamp=True` (supported by the DuckDB store) it does hide it; skewless's
retrieval always passes it, so a late row counts only from when it arrived, as online.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import copy_repo, feast_apply

from synthetic.generate import ACTIVITY_FILE, ACTIVITY_SCHEMA, LABELS_FILE, LABEL_SCHEMA, PROFILE_SCHEMA, PROFILES_FILE
from training.dataset import historical_features
from skewless.store import open_store

UTC = timezone.utc
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def activity_row(cid, event, created, logins_7d, last_active, minutes_7d=10.0):
    row = {c: 0 for c in ACTIVITY_SCHEMA.names}
    row.update(customer_id=cid, event_timestamp=event, created=created, logins_7d=logins_7d,
               logins_30d=logins_7d * 3, active_minutes_7d=minutes_7d, active_minutes_30d=30.0,
               spend_7d=1.0, spend_30d=3.0, last_active_at=last_active)
    return row


PROFILES = [
    # customer 1: basic, upgraded to pro on day 10
    dict(customer_id=1, event_timestamp=day(-100), created=day(-100), plan="basic", region="na", seats=2,
         monthly_fee=24.0, signup_date=day(-100), status="active"),
    dict(customer_id=1, event_timestamp=day(10), created=day(10), plan="pro", region="na", seats=4,
         monthly_fee=100.0, signup_date=day(-100), status="active"),
    # customer 2: no seats recorded
    dict(customer_id=2, event_timestamp=day(-5), created=day(-5), plan="basic", region=None, seats=None,
         monthly_fee=12.0, signup_date=day(-5), status="active"),
]
ACTIVITY = [
    activity_row(1, day(5), day(5), logins_7d=7, last_active=day(4.5)),
    activity_row(1, day(12), day(12), logins_7d=9, last_active=day(11.5)),
    # two rows at the same event time: the one created later wins
    activity_row(1, day(20), day(20), logins_7d=1, last_active=day(19.5)),
    activity_row(1, day(20), day(21), logins_7d=2, last_active=day(19.5)),
    # customer 2: one old row (expires under the 30-day TTL) and one late-arriving row
    activity_row(2, day(0), day(0), logins_7d=3, last_active=day(-0.5)),
    activity_row(2, day(50), day(53), logins_7d=5, last_active=day(49.5)),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory, redis_endpoint):
    repo = copy_repo(tmp_path_factory.mktemp("pit") / "feature_repo")
    data = repo / "data"
    pq.write_table(pa.Table.from_pylist(PROFILES, schema=PROFILE_SCHEMA), data / PROFILES_FILE)
    pq.write_table(pa.Table.from_pylist(ACTIVITY, schema=ACTIVITY_SCHEMA), data / ACTIVITY_FILE)
    pq.write_table(LABEL_SCHEMA.empty_table(), data / LABELS_FILE)
    result = feast_apply(repo, redis_endpoint)
    assert result.returncode == 0, result.stderr
    return open_store(repo)


def retrieve(store, rows: list[tuple[int, datetime]]) -> pd.DataFrame:
    """The training path's retrieval (which joins DuckDB's reordered rows back on keys)."""
    keys = pd.DataFrame(rows, columns=["customer_id", "event_timestamp"])
    return historical_features(store, "churn_v1", keys)


def test_value_changed_after_the_row_time_does_not_leak(store):
    df = retrieve(store, [(1, day(8)), (1, day(11))]).set_index("event_timestamp")
    assert df.loc[day(8), "plan"] == "basic" and df.loc[day(8), "logins_7d"] == 7
    assert df.loc[day(11), "plan"] == "pro" and df.loc[day(11), "seats"] == 4
    assert df.loc[day(11), "logins_7d"] == 7  # the day-12 row is still in the future


def test_before_any_row_everything_is_null(store):
    df = retrieve(store, [(1, day(-200)), (99, day(8))])
    assert df["plan"].isna().all() and df["logins_7d"].isna().all()
    assert df["tenure_days"].isna().all()


def test_row_older_than_ttl_comes_back_null(store):
    df = retrieve(store, [(2, day(29)), (2, day(31))]).set_index("event_timestamp")
    assert df.loc[day(29), "logins_7d"] == 3
    assert pd.isna(df.loc[day(31), "logins_7d"])  # 31 days after the day-0 row > 30-day TTL
    assert df.loc[day(31), "plan"] == "basic"  # the profile view's TTL is long


def test_same_event_time_later_created_wins(store):
    df = retrieve(store, [(1, day(25))])
    assert df.loc[0, "logins_7d"] == 2


def test_late_arriving_row_counts_only_from_its_created_time(store):
    # event day 50, created day 53: not known on day 51 (and the day-0 row has expired)
    df = retrieve(store, [(2, day(51)), (2, day(53.5))]).set_index("event_timestamp")
    assert pd.isna(df.loc[day(51), "logins_7d"])
    assert df.loc[day(53.5), "logins_7d"] == 5


def test_stock_feast_without_created_filter_leaks_late_rows(store):
    """Documents Feast's default: without filter_by_created_timestamp the late row leaks."""
    entity = pd.DataFrame({"customer_id": [2], "event_timestamp": [day(51)], "as_of": [day(51)]})
    out = store.get_historical_features(entity_df=entity, features=store.get_feature_service("churn_v1")).to_df()
    assert out.loc[0, "logins_7d"] == 5


def test_derived_features_are_relative_to_the_row_time(store):
    df = retrieve(store, [(1, day(8)), (2, day(1))]).set_index("customer_id")
    assert df.loc[1, "tenure_days"] == pytest.approx(108.0)
    assert df.loc[1, "days_since_last_active"] == pytest.approx(3.5)
    assert df.loc[1, "fee_per_seat"] == pytest.approx(12.0)
    assert df.loc[1, "minutes_per_seat_7d"] == pytest.approx(5.0)
    assert df.loc[1, "login_trend"] == pytest.approx(7 / (21 * 7 / 30))
    # missing seats: ratios over seats are null, not a made-up default
    assert pd.isna(df.loc[2, "fee_per_seat"]) and pd.isna(df.loc[2, "minutes_per_seat_7d"])
    assert df.loc[2, "tenure_days"] == pytest.approx(6.0)
