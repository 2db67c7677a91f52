"""The one scoring function: features -> (probability, prediction, risk segment).

Training evaluation, batch scoring, the online service and the stream consumer all call
`score`, and it scores with the bundle's trees walked by skewless/trees.py (XGBoost's own
probabilities bit for bit, ~3x cheaper for one row); so the way a feature reaches the model
(column order, int vs float, NaN vs None, known and unseen categories) is decided here and
only here, from the bundle's manifest:

- columns are taken by name in the manifest's order, whatever order the input has;
- numbers become float32 (what XGBoost uses internally); None, NaN and pandas NA become NaN,
  which XGBoost treats as missing;
- strings become the index of their category in the manifest (XGBoost native categoricals);
  a category not seen in training, or a missing one, becomes NaN: missing, never a guess.
"""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
import xgboost
from xgboost import core as xgb_core

from skewless.bundle import Bundle, FeatureSpec


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
    if not isinstance(features, pd.DataFrame):
        return _matrix_from_columns(specs, features)
    out = np.empty((len(features), len(specs)), dtype=np.float32)
    for j, spec in enumerate(specs):
        values = features[spec.name]
        if spec.is_categorical:
            out[:, j] = _category_codes(values, spec.categories or ())
        else:
            out[:, j] = _numbers(values)
    return out


def _matrix_from_columns(specs: Sequence[FeatureSpec], features: Mapping[str, Sequence[Any]]) -> np.ndarray:
    """feature_matrix for a dict of columns (what the online and stream paths hold): the same values
    (float64, then float32) from one array build instead of one per column, ~2x faster for one row
    (48 -> 22 us); numerical columns go in untouched (a 100-row matrix 73 -> ~35 us against
    replacing each None first). `np.fromiter` over the columns one after the other converts each
    value as `np.array` does (None -> NaN, bools, numeric strings) without first working out a
    nested list's shape: ~30% less again (100 rows ~100 -> ~70 us, one row ~6 -> ~3.5).
    """
    nan = math.nan
    columns = []
    for spec in specs:
        values = features[spec.name]
        if spec.is_categorical:
            index = spec.category_codes
            columns.append([index.get(v, nan) if isinstance(v, str) else nan for v in values])
        else:
            columns.append(values)  # numbers as they are; None becomes NaN in numpy's own float64 conversion
    n = len(columns[0]) if columns else 0
    lengths = set(map(len, columns))
    if len(lengths) > 1:
        raise ValueError(f"feature columns of different lengths: {sorted(lengths)}")
    flat = np.fromiter(chain.from_iterable(columns), dtype=np.float64, count=n * len(specs))
    return flat.reshape(len(specs), n).T.astype(np.float32, order="C")


def _numbers(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="raise").astype("float64").to_numpy(na_value=np.nan)


def _category_codes(values: pd.Series, categories: Sequence[str]) -> np.ndarray:
    codes = pd.Categorical(values.astype("object").where(values.notna(), None), categories=list(categories)).codes
    return np.where(codes < 0, np.nan, codes).astype(np.float64)


# inplace_predict's arguments for a dense matrix: probabilities, every tree, NaN = missing
_PREDICT_ARGS = xgb_core.make_jcargs(type=0, training=False, iteration_begin=0, iteration_end=0, missing=math.nan, strict_shape=False, cache_id=0)


def predict(booster: xgboost.Booster, matrix: np.ndarray) -> np.ndarray:
    """`booster.inplace_predict(matrix)` (float32, C order, one model output per row): XGBoost's
    own answer, which training checks the tree walk against (training/train.py) and
    bench/model_call.py measures it beside.

    The same C call with the same arguments (XGBoosterPredictFromDense), without the Python
    set-up the wrapper redoes on every call. tests/test_training.py checks the result is
    inplace_predict's, bit for bit.
    """
    shape, dims, out = ctypes.POINTER(xgb_core.c_bst_ulong)(), xgb_core.c_bst_ulong(), ctypes.POINTER(ctypes.c_float)()
    interface = xgb_core.from_pystr_to_cstr(_array_interface(matrix))
    xgb_core._check_call(
        xgb_core._LIB.XGBoosterPredictFromDense(
            booster.handle, interface, _PREDICT_ARGS, None, ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(out)
        )
    )
    n = math.prod(shape[i] for i in range(dims.value))
    if n != matrix.shape[0]:
        raise ValueError(f"the model gives {n} outputs for {matrix.shape[0]} rows: score() handles one output per row")
    return np.ctypeslib.as_array(out, (n,)).copy()


def _array_interface(matrix: np.ndarray) -> str:
    """The array-interface JSON XGBoost reads a dense matrix from, as its Python wrapper builds it."""
    if matrix.dtype != np.float32 or not matrix.flags.c_contiguous or matrix.ndim != 2:
        raise ValueError("predict() takes a C-contiguous 2-D float32 matrix (what feature_matrix builds)")
    return json.dumps(matrix.__array_interface__)


def warm_up(bundle: Bundle) -> None:
    """Score one all-missing row, so that the first real call does not pay the first-call costs
    (numba's compiled walk loaded from its cache, ~0.3 s): the service and the stream consumer
    call it before they take traffic."""
    score(bundle, {f.name: [None] for f in bundle.features})


def score(bundle: Bundle, features: Features) -> Scores:
    """Score rows of features (a DataFrame or a dict of columns) with a bundle."""
    matrix = feature_matrix(bundle.features, features)
    if len(matrix) == 0:
        return Scores(np.empty(0), np.empty(0, dtype=np.int64), [])
    probability = bundle.forest.probabilities(matrix, bundle.scoring_threads).astype(np.float64)
    prediction = (probability >= bundle.threshold).astype(np.int64)
    uppers, names = bundle.segment_bounds
    segment = names[np.searchsorted(uppers, probability, side="right")]
    return Scores(probability, prediction, segment.tolist())
