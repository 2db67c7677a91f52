"""A FeatureService resolved against the Feast registry: the views and on-demand views behind it.

Batch and online both read features view by view and then run the registry's own on-demand
transform, so they need the same answer to "which views, which features, which transform", and
the same answer to "is this customer known at T" (`found`): every path reports a customer with
no value from any feature view at T as not found (404 online, listed and not scored in batch)
instead of scoring a row of missing inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from feast import FeatureStore, FeatureView
from feast.errors import FeatureServiceNotFoundException
from feast.on_demand_feature_view import OnDemandFeatureView

from skewless import definitions


@dataclass
class Contract:
    """The registry objects behind a FeatureService, resolved once."""

    service: str
    features: list[str]  # the service's feature names, in order
    views: list[FeatureView]  # every view the service or its on-demand views read
    odfvs: list[OnDemandFeatureView]
    view_features: list[str]  # the service's features that come from feature views (not on-demand)

    def found(self, values: Mapping[str, Sequence[Any]] | pd.DataFrame) -> np.ndarray:
        """Per row: at least one of the service's feature-view values is present (not None/NaN).

        A feature view's row past its TTL is null by Feast's point-in-time rule offline and by
        the TTL store online, so this is the same question on every path.
        """
        if isinstance(values, pd.DataFrame):
            return values[self.view_features].notna().any(axis=1).to_numpy() if self.view_features else np.zeros(len(values), bool)
        n = len(next(iter(values.values()), []))
        out = [False] * n  # plain Python: this runs on every online request
        left = range(n)  # rows with no value found yet: after the first feature, usually none
        for name in self.view_features:
            column = values[name]
            for i in left:
                v = column[i]
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    out[i] = True
            left = [i for i in left if not out[i]]
            if not left:
                break
        return np.array(out, dtype=bool)

    def definitions(self) -> dict[str, str]:
        """Fingerprints of what each view and on-demand view behind the service means (skewless/definitions.py)."""
        return definitions.of(self.views, self.odfvs)


def feature_service(store: FeatureStore, name: str):
    """The registered FeatureService `name`; a LookupError naming the registered ones if there is none."""
    try:
        return store.get_feature_service(name)
    except FeatureServiceNotFoundException:
        known = sorted(s.name for s in store.list_feature_services())
        raise LookupError(f"no FeatureService {name!r} in Feast project {store.project!r} "
                          f"(registered: {', '.join(known) or 'none: run `skewless apply`'})") from None


def resolve(store: FeatureStore, service_name: str, service=None) -> Contract:
    """The views and on-demand views behind `service_name` (or the already read FeatureService `service`)."""
    service = service if service is not None else feature_service(store, service_name)
    views: dict[str, FeatureView] = {}
    odfvs: list[OnDemandFeatureView] = []
    registered_odfvs = {o.name: o for o in store.list_on_demand_feature_views()}
    for proj in service.feature_view_projections:
        odfv = registered_odfvs.get(proj.name)
        if odfv is None:
            views[proj.name] = store.get_feature_view(proj.name)
        else:
            odfvs.append(odfv)
            for src in odfv.source_feature_view_projections.values():
                views.setdefault(src.name, store.get_feature_view(src.name))
    names = [f.name for p in service.feature_view_projections for f in p.features]
    odfv_names = {o.name for o in odfvs}
    from_views = [f.name for p in service.feature_view_projections if p.name not in odfv_names for f in p.features]
    return Contract(service_name, names, list(views.values()), odfvs, from_views)


