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


def test_a_stored_on_demand_view_expires_with_its_sources_smallest_ttl(tmp_path, redis_endpoint, monkeypatch):
    """An on-demand view written to the online store has no TTL of its own (Feast 0.67 read it
    through the TTL store's per-view hook, which then failed on `view.ttl`). Its stored rows hold
    as long as its shortest-lived source would: customer_activity's 30 days here."""
    from datetime import timedelta

    import pyarrow.parquet as pq
    from conftest import copy_repo, feast_apply

    from feast_plugins.redis_server import throwaway_redis
    from feast_plugins.ttl_store import read_time
    from synthetic.generate import ACTIVITY_FILE, ACTIVITY_SCHEMA, LABEL_SCHEMA, LABELS_FILE, PROFILE_SCHEMA, PROFILES_FILE
    from skewless.store import REDIS_ENV, open_store

    repo = copy_repo(tmp_path / "feature_repo")
    (repo / "definitions.py").write_text((repo / "definitions.py").read_text() + STORED_ODFV)
    for schema, name in ((ACTIVITY_SCHEMA, ACTIVITY_FILE), (PROFILE_SCHEMA, PROFILES_FILE), (LABEL_SCHEMA, LABELS_FILE)):
        pq.write_table(schema.empty_table(), repo / "data" / name)
    assert feast_apply(repo, redis_endpoint).returncode == 0
    with throwaway_redis() as endpoint:
        monkeypatch.setenv(REDIS_ENV, endpoint.feast)
        store = open_store(repo)
        written = datetime.now(timezone.utc)
        # as a producer writes such a view: source values in, the registry's transform applied on
        # write; Feast stamps the stored row with the time of the write
        store.write_to_online_store("stored_login_rate", pd.DataFrame({"customer_id": [1], "event_timestamp": [written], "logins_7d": [14]}))

        def rate(days_later: float):
            with read_time(written + timedelta(days=days_later)):
                rows = store.get_online_features(features=["stored_login_rate:logins_per_day_7d"], entity_rows=[{"customer_id": 1}])
                return rows.to_dict()["logins_per_day_7d"][0]

        assert rate(0) == 2.0 and rate(29.9) == 2.0
        assert rate(30.1) is None
