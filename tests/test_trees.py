"""The scorer (skewless/trees.py): XGBoost's trees scored by compiled loops (QuickScorer, or the
walk for trees of more than 64 leaves) must give XGBoost's own probabilities bit for bit, on
every kind of split and input the rules cover, and refuse a model whose rules it does not
reproduce."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from skewless.score import feature_matrix, predict
from skewless.trees import Forest, TreeModelError


def _model(objective: str = "binary:logistic", booster: str = "gbtree", depth: int = 4, rounds: int = 40,
           categories: int = 3, **extra) -> tuple[xgb.Booster, np.ndarray]:
    """A small model on made-up data: three numbers (with missing values) and a categorical column."""
    rng = np.random.default_rng(3)
    n = 3000
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 3] = rng.integers(0, categories, n)
    x[rng.random((n, 4)) < 0.1] = np.nan
    logit = x[:, 0] - 0.5 * np.nan_to_num(x[:, 1]) + np.where(np.nan_to_num(x[:, 3]) % 3 == 1, 1.0, -0.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-np.nan_to_num(logit)))).astype(np.float32)
    label = y if objective != "multi:softprob" else (y + (x[:, 0] > 1)).astype(np.float32)
    dm = xgb.DMatrix(x, label=label, feature_types=["float", "float", "float", "c"], enable_categorical=True)
    params = {"objective": objective, "booster": booster, "max_depth": depth, "eta": 0.3, "max_cat_to_onehot": 1,
              "nthread": 1, "seed": 1, **extra}
    return xgb.train(params, dm, num_boost_round=rounds), x


def _hostile(x: np.ndarray, categories: int) -> np.ndarray:
    """The inputs at the edges of XGBoost's rules: missing, infinite, unseen, negative, fractional and huge categories."""
    x = x.copy()
    x[0::11, 0] = np.inf
    x[1::11, 1] = -np.inf
    x[2::11, 3] = categories + 5  # a category the model never saw
    x[3::11, 3] = -1
    x[4::11, 3] = 1.5  # read as category 1
    x[5::11, 3] = 3e7  # past XGBoost's largest category
    x[6::11, 3] = -0.5
    x[7::11, :] = np.nan
    return np.ascontiguousarray(x)


@pytest.mark.parametrize("depth,categories", [(4, 3), (8, 3), (3, 150)])
def test_walk_is_xgboost_bit_for_bit(depth, categories):
    booster, x = _model(depth=depth, categories=categories)
    forest = Forest.from_booster(booster)
    assert (forest.quick is None) == (depth == 8)  # depth 8 grows trees of more than 64 leaves: the walk
    for scorer in (forest, forest.walk_only()):
        for rows in (x, _hostile(x, categories)):
            assert np.array_equal(scorer.probabilities(rows), predict(booster, rows)), (depth, scorer.quick is None)
    for rows in (x, _hostile(x, categories), np.ascontiguousarray(x[:1])):
        assert np.array_equal(forest.probabilities(rows), predict(booster, rows))
    assert forest.probabilities(np.ascontiguousarray(x[:0])).shape == (0,)
    hostile = _hostile(x, categories)
    whole = forest.probabilities(hostile)
    for n in (1, 7, 8, 9, 63, 65, 130):  # rows walked side by side, LANES at a time, and the fewer left at a block's end
        assert np.array_equal(forest.probabilities(np.ascontiguousarray(hostile[5:5 + n])), whole[5:5 + n]), n
    many = np.ascontiguousarray(np.tile(_hostile(x, categories), (6, 1)))  # 18,000 rows: past PARALLEL_ROWS a thread
    assert np.array_equal(forest.probabilities(many, threads=2), forest.probabilities(many))  # the split changes nothing


@pytest.mark.parametrize("categories,extra,leaves", [
    (40, {"rounds": 20, "min_child_weight": 0, "reg_lambda": 0, "depth": 6}, 64),  # full trees: every bit of the mask
    (3, {"rounds": 5, "gamma": 1e9}, 1),  # no split pays: every tree a single leaf
])
def test_quick_scorer_at_its_limits(categories, extra, leaves):
    booster, x = _model(categories=categories, **extra)
    forest = Forest.from_booster(booster)
    assert forest.quick is not None and np.diff(forest.quick.leaf_start).max() == leaves
    rows = _hostile(x, categories)
    assert np.array_equal(forest.probabilities(rows), predict(booster, rows))


def test_walk_accepts_reg_logistic():
    booster, x = _model("reg:logistic")
    assert np.array_equal(Forest.from_booster(booster).probabilities(x), predict(booster, x))


@pytest.mark.parametrize("objective,booster,refused", [
    ("reg:squarederror", "gbtree", "objective is 'reg:squarederror'"),
    ("binary:logistic", "dart", "gbtree models; this one is 'dart'"),
    ("multi:softprob", "gbtree", "objective is 'multi:softprob'"),
])
def test_walk_refuses_what_it_does_not_reproduce(objective, booster, refused):
    extra = {"num_class": 3} if objective == "multi:softprob" else {}
    model, _ = _model(objective, booster, rounds=3, **extra)
    with pytest.raises(TreeModelError, match=refused):
        Forest.from_booster(model)


def test_walk_refuses_a_matrix_it_would_misread():
    booster, x = _model(rounds=2)
    forest = Forest.from_booster(booster)
    with pytest.raises(ValueError, match="float32"):
        forest.probabilities(x.astype(np.float64))
    with pytest.raises(ValueError, match="4 features"):
        forest.probabilities(np.ascontiguousarray(x[:, :3]))


def test_a_trained_bundle_records_its_scorer_and_scores_as_xgboost(small_bundle):
    """The project's own model: the manifest says which scorer the metrics came from, and the
    bundle's walk equals XGBoost on every training row, with missing values added."""
    bundle = small_bundle[0].bundle
    scorer = bundle.manifest["scorer"]
    assert "trees.py" in scorer["name"] and scorer["bit_equal_to_xgboost"] == 1.0 and scorer["max_abs_difference"] == 0.0
    assert scorer["rows_compared_with_xgboost"] == bundle.manifest["rows"]["validation"]
    matrix = feature_matrix(bundle.features, pd.read_parquet(bundle.path / "training_set.parquet"))
    matrix[::5, ::3] = np.nan
    assert np.array_equal(bundle.forest.probabilities(matrix), predict(bundle.booster, matrix))


def test_a_bundle_walks_its_saved_trees_and_guards_them(small_bundle, tmp_path):
    """The bundle keeps the walked arrays (trees.npz, checked like the model file); a bundle from
    before them builds the same arrays from its booster."""
    import json
    import shutil

    from skewless.bundle import MANIFEST_FILE, TREES_FILE, BundleError, load_bundle

    bundle = small_bundle[0].bundle
    rows = feature_matrix(bundle.features, pd.read_parquet(bundle.path / "training_set.parquet"))
    dest = tmp_path / "models" / "churn" / bundle.version
    shutil.copytree(bundle.path, dest)

    with open(dest / TREES_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="trees.npz does not match"):
        load_bundle(dest.name, tmp_path / "models")

    (dest / TREES_FILE).unlink()  # an older bundle
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    del manifest["trees_sha256"]
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    older = load_bundle(dest.name, tmp_path / "models")
    assert np.array_equal(older.forest.probabilities(rows), bundle.forest.probabilities(rows))
