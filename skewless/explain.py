"""Why a customer got their score: exact tree SHAP contributions, the same on every path.

XGBoost computes them itself (`predict(pred_contribs=True)`, TreeSHAP over the bundle's own
trees, categorical splits included): per row, one contribution per feature plus the bias (the
base value), and base value + the contributions = the model's margin for that row. Nothing here
is a second model or a hand-written SHAP: only the bundle's booster, fed the very matrix the
score came from (`skewless.score.feature_matrix`, the one scoring function's input), so an
explanation of a customer at T is the same online, in batch and from `skewless explain`.

A reason names the feature, the value the model saw (as served: a category's name, a number,
None for missing), its contribution to the margin (log-odds) and its direction: `raises` the
churn risk or `lowers` it. Reasons are ranked by the size of the contribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from skewless.bundle import Bundle
from skewless.score import Features, feature_matrix


@dataclass(frozen=True)
class Reason:
    feature: str
    value: Any
    contribution: float
    direction: str  # "raises" or "lowers" the churn risk

    def to_json(self) -> dict[str, Any]:
        """As the service answers it: no `value` when the value is missing (the API leaves nulls out)."""
        out = {"feature": self.feature, "value": self.value, "contribution": self.contribution, "direction": self.direction}
        if self.value is None:
            del out["value"]
        return out


@dataclass(frozen=True)
class Explanation:
    base_value: float  # the model's margin before any feature (log-odds)
    margin: float  # base_value + every contribution
    reasons: list[Reason]  # the top k by |contribution|

    def to_json(self) -> dict[str, Any]:
        return {"base_value": self.base_value, "margin": self.margin, "reasons": [r.to_json() for r in self.reasons]}


def contributions(bundle: Bundle, matrix: np.ndarray) -> np.ndarray:
    """(rows, features + 1) float32: each feature's SHAP value, the bias last (XGBoost's layout)."""
    import xgboost as xgb

    types = ["c" if s.is_categorical else "float" for s in bundle.features]
    dmatrix = xgb.DMatrix(matrix, feature_names=bundle.feature_names, feature_types=types, enable_categorical=True, missing=math.nan, nthread=1)
    return bundle.booster.predict(dmatrix, pred_contribs=True, validate_features=False)


def explain(bundle: Bundle, features: Features, top: int) -> list[Explanation]:
    """The top `top` reasons of each row of `features` (a DataFrame or a dict of columns)."""
    matrix = feature_matrix(bundle.features, features)
    if len(matrix) == 0:
        return []
    contribs = contributions(bundle, matrix).astype(np.float64)
    names = bundle.feature_names
    columns = _columns(features, names)
    k = max(0, min(top, len(names)))
    order = np.argsort(-np.abs(contribs[:, :-1]), axis=1, kind="stable")[:, :k]
    out = []
    for row, picks in enumerate(order):
        reasons = [
            Reason(names[j], _plain(columns[names[j]][row]), float(contribs[row, j]), "raises" if contribs[row, j] > 0 else "lowers")
            for j in picks
        ]
        out.append(Explanation(float(contribs[row, -1]), float(contribs[row].sum()), reasons))
    return out


def _columns(features: Features, names: Sequence[str]) -> Mapping[str, Sequence[Any]]:
    if isinstance(features, Mapping):
        return {n: list(features[n]) for n in names}
    return {n: features[n].tolist() for n in names}


def _plain(value: Any) -> Any:
    """A value as JSON and tables carry it: None for missing (NaN included), Python scalars."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value
