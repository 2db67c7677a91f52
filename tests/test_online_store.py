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
