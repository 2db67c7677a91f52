"""Feast's Redis online store against a real redis-server: write one customer, read it back."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd


def test_write_and_read_one_customer_through_feast(small_store, redis_endpoint):
    fs = small_store
    now = datetime(2026, 10, 30, tzinfo=timezone.utc)
    row = pd.DataFrame(
        {
            "customer_id": [424242],
            "event_timestamp": [now],
            "created": [now],
            "plan": ["pro"],
            "region": ["emea"],
            "seats": [3],
            "monthly_fee": [75.0],
            "signup_date": [datetime(2025, 1, 1, tzinfo=timezone.utc)],
            "status": ["active"],
        }
    )
    fs.write_to_online_store("customer_profile", row)
    assert redis_endpoint.client().dbsize() >= 1
    got = fs.get_online_features(
        features=["customer_profile:plan", "customer_profile:seats", "customer_profile:monthly_fee"],
        entity_rows=[{"customer_id": 424242}, {"customer_id": 1_999_999}],
    ).to_dict()
    assert got["plan"] == ["pro", None]
    assert got["seats"] == [3, None]
    assert got["monthly_fee"] == [75.0, None]


STORED_ODFV = '''

@on_demand_feature_view(
    entities=[customer],
    sources=[customer_activity],
    schema=[Field(name="logins_per_day_7d", dtype=Float64)],
    mode="python",
    write_to_online_store=True,
    description="Logins per day over 7 days, computed when materialized and stored in Redis.",
    owner=OWNER,
    tags=TAGS,
)
def stored_login_rate(inputs: dict) -> dict:
    return {"logins_per_day_7d": [None if v is None else v / 7.0 for v in inputs["logins_7d"]]}
'''


def test_a_stored_on_demand_view_is_served_only_while_its_sources_are(tmp_path, redis_endpoint, monkeypatch):
    """Feast 0.67 stamps a stored on-demand view's row with the time it was *written*, so a
    rule counted from that stamp serves the row long after its sources expired, while offline
    retrieval (which recomputes the view from its sources) gives null. One activity row at S,
    activity's TTL 30 days, the view materialized now: online and offline agree at S + 1 day
    (a value) and at S + 31 days and today (null), though the stored row is minutes old."""
    from datetime import timedelta

    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import copy_repo, feast_apply

    from feast_plugins.redis_server import throwaway_redis
    from feast_plugins.ttl_store import read_time
    from skewless.store import REDIS_ENV, open_store
    from synthetic.generate import ACTIVITY_FILE, ACTIVITY_SCHEMA, LABEL_SCHEMA, LABELS_FILE, PROFILE_SCHEMA, PROFILES_FILE

    repo = copy_repo(tmp_path / "feature_repo")
    (repo / "definitions.py").write_text((repo / "definitions.py").read_text() + STORED_ODFV)
    for schema, name in ((PROFILE_SCHEMA, PROFILES_FILE), (LABEL_SCHEMA, LABELS_FILE)):
        pq.write_table(schema.empty_table(), repo / "data" / name)
    s = datetime(2024, 1, 1, tzinfo=timezone.utc)
    row = {f.name: [None] for f in ACTIVITY_SCHEMA} | {"customer_id": [1], "event_timestamp": [s], "created": [s], "logins_7d": [14]}
    pq.write_table(pa.Table.from_pydict(row, schema=ACTIVITY_SCHEMA), repo / "data" / ACTIVITY_FILE)
    assert feast_apply(repo, redis_endpoint).returncode == 0
    with throwaway_redis() as endpoint:
        monkeypatch.setenv(REDIS_ENV, endpoint.feast)
        store = open_store(repo)
        store.materialize(s - timedelta(days=1), s + timedelta(days=1), feature_views=["customer_activity", "stored_login_rate"])

        def online(at: datetime):
            with read_time(at):
                rows = store.get_online_features(features=["stored_login_rate:logins_per_day_7d"], entity_rows=[{"customer_id": 1}])
                return rows.to_dict()["logins_per_day_7d"][0]

        def offline(at: datetime):
            entity = pd.DataFrame({"customer_id": [1], "event_timestamp": [at]})
            value = store.get_historical_features(entity_df=entity, features=["stored_login_rate:logins_per_day_7d"]).to_df()
            return value["logins_per_day_7d"][0]

        now = datetime.now(timezone.utc)
        assert online(s + timedelta(days=1)) == offline(s + timedelta(days=1)) == 2.0
        for at in (s + timedelta(days=31), now):
            assert online(at) is None and pd.isna(offline(at)), at
