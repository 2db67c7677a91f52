"""A FeatureService resolved against the Feast registry: the views and on-demand views behind it.

Batch and online both read features view by view and then run the registry's own on-demand
transform, so they need the same answer to "which views, which features, which transform".
"""

from __future__ import annotations

from dataclasses import dataclass

from feast import FeatureStore, FeatureView
from feast.on_demand_feature_view import OnDemandFeatureView


@dataclass
class Contract:
    """The registry objects behind a FeatureService, resolved once."""

    service: str
    features: list[str]  # the service's feature names, in order
    views: list[FeatureView]  # every view the service or its on-demand views read
    odfvs: list[OnDemandFeatureView]


def resolve(store: FeatureStore, service_name: str) -> Contract:
    service = store.get_feature_service(service_name)
    views: dict[str, FeatureView] = {}
    odfvs: list[OnDemandFeatureView] = []
    for proj in service.feature_view_projections:
        odfv = next((o for o in store.list_on_demand_feature_views() if o.name == proj.name), None)
        if odfv is None:
            views[proj.name] = store.get_feature_view(proj.name)
        else:
            odfvs.append(odfv)
            for src in odfv.source_feature_view_projections.values():
                views.setdefault(src.name, store.get_feature_view(src.name))
    names = [f.name for p in service.feature_view_projections for f in p.features]
    return Contract(service_name, names, list(views.values()), odfvs)


