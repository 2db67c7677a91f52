"""Online features for a set of customers at the request time, read from Redis through Feast.

The service asks Feast for the raw feature views of the contract (with their event
timestamps), applies each view's TTL relative to the request time, and then runs the
registry's own on-demand transform with `as_of` = request time. Two things make this the same
as offline retrieval, not merely close to it:

- TTL. Feast 0.67's Redis store returns a value of any age as PRESENT; offline retrieval nulls
  it past the view's TTL. Here the TTL is applied before the derived features are computed, so
  they see None exactly where offline they see null.
- One transform. Derived features come from `OnDemandFeatureView.transform_dict`, the function
  Feast itself runs online; nothing about a feature is written in the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from feast import FeatureStore

from training.contract import resolve
from training.dataset import REQUEST_TIME

ENTITY_KEY = "customer_id"
TS_SUFFIX = "__ts"


@dataclass
class LookupResult:
    features: dict[str, list[Any]]  # the service's features, in contract order, one list entry per customer
    found: list[bool]  # False: the customer has no row in any view of the online store
    oldest_age_s: list[float | None]  # age of the oldest view row used, for the feature-age metric


class OnlineFeatures:
    """Resolved once at start-up; `lookup` is called per request."""

    def __init__(self, store: FeatureStore, service_name: str):
        self.store = store
        contract = resolve(store, service_name)
        self.feature_names = contract.features
        self.odfvs = contract.odfvs
        self.views = [(v.name, [f.name for f in v.features], v.ttl.total_seconds() if v.ttl else 0.0) for v in contract.views]
        self.refs = [f"{name}:{f}" for name, feats, _ in self.views for f in feats]

    def lookup(self, customer_ids: list[int], request_time: datetime | None = None) -> tuple[LookupResult, datetime]:
        now = request_time or datetime.now(timezone.utc)
        n = len(customer_ids)
        raw = self.store.get_online_features(
            features=self.refs, entity_rows=[{ENTITY_KEY: i} for i in customer_ids]
        ).to_dict(include_event_timestamps=True)
        now_s = now.timestamp()
        found = [False] * n
        oldest: list[float | None] = [None] * n
        inputs: dict[str, list[Any]] = {}
        for _, feats, ttl in self.views:
            ts = raw[feats[0] + TS_SUFFIX]  # seconds; 0 when the store has no row for the key
            for i in range(n):
                if ts[i]:
                    found[i] = True
                    age = now_s - ts[i]
                    oldest[i] = age if oldest[i] is None else max(oldest[i], age)
            expired = [bool(ts[i]) and ttl > 0 and ts[i] + ttl < now_s for i in range(n)]
            for f in feats:
                values = raw[f]
                inputs[f] = [None if expired[i] else values[i] for i in range(n)] if any(expired) else values
        inputs[REQUEST_TIME] = [now] * n
        for odfv in self.odfvs:
            inputs.update(odfv.transform_dict(dict(inputs)))
        features = {name: inputs[name] for name in self.feature_names}
        return LookupResult(features, found, oldest), now
