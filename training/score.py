"""The one scoring function: features -> (probability, prediction, risk segment).

Training evaluation, batch scoring and the online service all call `score`, so the way a
feature reaches the model (column order, int vs float, NaN vs None, known and unseen
categories) is decided here and only here, from the bundle's manifest:

- columns are taken by name in the manifest's order, whatever order the input has;
- numbers become float32 (what XGBoost uses internally); None, NaN and pandas NA become NaN,
  which XGBoost treats as missing;
- strings become the index of their category in the manifest (XGBoost native categoricals);
  a category not seen in training, or a missing one, becomes NaN: missing, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from training.bundle import Bundle, FeatureSpec


@dataclass
class Scores:
    """Scores for n rows, in input order."""

    probability: np.ndarray  # float64
    prediction: np.ndarray  # int64, 1 = will churn at the bundle's decision threshold
    risk_segment: list[str]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "churn_probability": self.probability,
                "churn_prediction": self.prediction,
                "risk_segment": self.risk_segment,
            }
        )


Features = pd.DataFrame | Mapping[str, Sequence[Any]]


def feature_matrix(specs: Sequence[FeatureSpec], features: Features) -> np.ndarray:
    """The model's input matrix (float32, rows x specs, in spec order) from a frame or a column dict."""
    columns = features.columns if isinstance(features, pd.DataFrame) else features.keys()
    missing = [spec.name for spec in specs if spec.name not in columns]
    if missing:
        raise KeyError(f"features missing for the model: {missing}")
    n = len(features) if isinstance(features, pd.DataFrame) else len(next(iter(features.values()), []))
    out = np.empty((n, len(specs)), dtype=np.float32)
    for j, spec in enumerate(specs):
        values = features[spec.name]
        if spec.is_categorical:
            out[:, j] = _category_codes(values, spec.categories or ())
        else:
            out[:, j] = _numbers(values)
    return out


def _numbers(values) -> np.ndarray:
    if isinstance(values, pd.Series):
        return pd.to_numeric(values, errors="raise").astype("float64").to_numpy(na_value=np.nan)
    return np.array([np.nan if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values], dtype=np.float64)


def _category_codes(values, categories: Sequence[str]) -> np.ndarray:
    if isinstance(values, pd.Series):
        codes = pd.Categorical(values.astype("object").where(values.notna(), None), categories=list(categories)).codes
        return np.where(codes < 0, np.nan, codes).astype(np.float64)
    index = {c: i for i, c in enumerate(categories)}
    return np.array([index.get(v, np.nan) if isinstance(v, str) else np.nan for v in values], dtype=np.float64)


def score(bundle: Bundle, features: Features) -> Scores:
    """Score rows of features (a DataFrame or a dict of columns) with a bundle."""
    matrix = feature_matrix(bundle.features, features)
    if len(matrix) == 0:
        return Scores(np.empty(0), np.empty(0, dtype=np.int64), [])
    probability = bundle.booster.inplace_predict(matrix, validate_features=False).astype(np.float64)
    prediction = (probability >= bundle.threshold).astype(np.int64)
    uppers = [s["upper"] for s in bundle.segments[:-1]]
    names = np.array([s["name"] for s in bundle.segments])
    segment = names[np.searchsorted(np.array(uppers, dtype=np.float64), probability, side="right")]
    return Scores(probability, prediction, segment.tolist())
