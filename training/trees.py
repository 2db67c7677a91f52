"""The model's trees as a few flat arrays, and the compiled walk that scores them: every path's scorer.

XGBoost's own predict spends ~35 us a call before it walks a tree (its C API builds a proxy
matrix, parses JSON arguments, sets up the predictor), and reaches its trees through ~600 heap
objects that a service's other work evicts from the caches between requests. Here the trees
are copied once, when a bundle is loaded, into one array of nodes (~750 KB for 599 trees of
depth 4) and walked by a loop that numba compiles (cached beside this file), eight rows side by
side: one row 17 us instead of 56 hot and ~120 instead of ~380 with cold caches, 100 rows 0.62 ms
instead of 0.72 hot and 0.72 instead of 1.06 cold (bench/model_call.py, 2026-12-06). The rules are XGBoost's CPU predictor's, so the
probabilities are XGBoost's bit for bit (checked on every model at training and recorded in
its manifest: training/train.py; and by tests/test_trees.py):

- a numerical split goes left when the value is below the threshold (float32 compare);
- a missing value (NaN) goes to the node's default child;
- a categorical split goes right when the category is in the node's set; a negative, fractional
  past its integer part, or unlisted category goes left;
- the leaves are added in tree order in float32, starting from the base margin, and the
  logistic transform is XGBoost's: 1 / (exp(min(-m, 88.7)) + 1 + 1e-16) in float32.

Only what this project trains is supported (gbtree, binary:logistic or reg:logistic, one
output); anything else is refused with a TreeModelError when the bundle loads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

FORMAT = 1  # of the arrays below as saved in a bundle: a change to them (or to _place_tree) must bump it
NODE = np.dtype([("left", np.int32), ("feature", np.int32), ("value", np.float32), ("flags", np.int32),
                 ("cat_start", np.int32), ("cat_words", np.int32)])  # value: the threshold, or a leaf's value
PARALLEL_ROWS = 8192  # fewer rows a thread are walked in the calling thread alone
BLOCK = 64  # rows walked through one tree before the next tree
LANES = 8  # rows walked through a tree side by side (16: slower; 4: 605 against 8's ~500 us for 100 rows)
DEFAULT_RIGHT, CATEGORICAL = 1, 2  # flags
MAX_CATEGORY = float(1 << 24)  # XGBoost's OutOfRangeCat: larger codes are no category
LOGISTIC = ("binary:logistic", "reg:logistic")


class TreeModelError(ValueError):
    """The booster is of a kind the walk does not reproduce; the message says which part."""


@dataclass(frozen=True)
class Forest:
    """A gbtree model's trees as arrays: `nodes` (NODE records, each tree's nodes together,
    children next to each other), `roots` (each tree's first node), `depths` (the steps from
    its root to its deepest leaf) and `cat_bits` (the categorical splits' category sets, 64
    categories a word)."""

    nodes: np.ndarray
    roots: np.ndarray
    depths: np.ndarray
    cat_bits: np.ndarray
    base_score: np.float32  # XGBoost's base_score, a probability
    n_features: int

    @classmethod
    def from_booster(cls, booster) -> "Forest":
        """The booster's trees, read from its own JSON model (what its C predictor walks)."""
        model = json.loads(booster.save_raw("json"))["learner"]
        params = model["learner_model_param"]
        objective = model["objective"]["name"]
        gbm = model["gradient_booster"]
        if gbm.get("name") != "gbtree":
            raise TreeModelError(f"the scorer walks gbtree models; this one is {gbm.get('name')!r}")
        if objective not in LOGISTIC:
            raise TreeModelError(f"the scorer applies the logistic transform; this model's objective is {objective!r}")
        if int(params.get("num_class", 0)) > 1 or int(params.get("num_target", 1)) != 1:
            raise TreeModelError("the scorer gives one output per row; this model has several")
        trees = gbm["model"]["trees"]
        nodes: list = []
        roots = np.empty(len(trees), dtype=np.int32)
        depths = np.empty(len(trees), dtype=np.int32)
        words: list[int] = []
        for i, tree in enumerate(trees):
            if int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
                raise TreeModelError("the scorer walks trees with one value a leaf; this model has vector leaves")
            roots[i] = len(nodes)
            depths[i] = _place_tree(tree, nodes, words)
        base = float(params["base_score"].strip("[]"))  # XGBoost 3 writes "[9.1E-2]" for a vector of one
        return cls(np.array(nodes, dtype=NODE), roots, depths, np.array(words, dtype=np.uint64), np.float32(base), int(params["num_feature"]))

    def save(self, path: Path) -> None:
        """Write the arrays (a bundle keeps them beside its model: training/bundle.py)."""
        with open(path, "wb") as f:
            np.savez(f, format=np.int32(FORMAT), nodes=self.nodes, roots=self.roots, depths=self.depths, cat_bits=self.cat_bits,
                     base_score=self.base_score, n_features=np.int32(self.n_features))

    @classmethod
    def load(cls, path: Path) -> "Forest | None":
        """The arrays `save` wrote, or None when they are of another format than this code walks.

        ~1 ms, against ~35 ms to build them from the booster, most of it holding the GIL
        (a 1 MB JSON parse, then Python over every node): what a worker loading a new bundle
        beside the requests it answers must not do (serving/rollout.py)."""
        with np.load(path, allow_pickle=False) as a:
            if int(a["format"]) != FORMAT or a["nodes"].dtype != NODE:
                return None
            return cls(a["nodes"], a["roots"], a["depths"], a["cat_bits"], np.float32(a["base_score"]), int(a["n_features"]))

    def probabilities(self, matrix: np.ndarray, threads: int = 1) -> np.ndarray:
        """P(class 1) for each row of a C-contiguous float32 matrix (NaN = missing), as float32.

        `threads` > 1 splits a large matrix into that many row ranges walked at once (the walk
        releases the GIL); a row's result does not depend on the split.
        """
        if matrix.dtype != np.float32 or not matrix.flags.c_contiguous or matrix.ndim != 2:
            raise ValueError("the scorer takes a C-contiguous 2-D float32 matrix (what training/score.py:feature_matrix builds)")
        if matrix.shape[1] != self.n_features:
            raise ValueError(f"the model reads {self.n_features} features, the matrix has {matrix.shape[1]} columns")
        out = np.empty(matrix.shape[0], dtype=np.float32)
        parts = min(threads, len(matrix) // PARALLEL_ROWS)
        if parts <= 1:
            _walk(matrix, self.nodes, self.roots, self.depths, self.cat_bits, self.base_score, out)
            return out
        from concurrent.futures import ThreadPoolExecutor

        bounds = np.linspace(0, len(matrix), parts + 1).astype(int)

        def walk(i: int) -> None:
            a, b = bounds[i], bounds[i + 1]
            _walk(matrix[a:b], self.nodes, self.roots, self.depths, self.cat_bits, self.base_score, out[a:b])

        with ThreadPoolExecutor(parts, thread_name_prefix="score") as pool:
            list(pool.map(walk, range(parts)))
        return out


def _place_tree(tree: dict, nodes: list, words: list[int]) -> int:
    """Append one tree's nodes, breadth first (an inner node's children side by side, the left
    one first); returns the tree's depth. A leaf's `left` names two copies of it, each pointing
    at the pair again, so a walk of any number of steps past a leaf stays on its value: every
    tree is walked exactly its depth, with no test for a leaf on the way."""
    left, right = tree["left_children"], tree["right_children"]
    cats = {n: tree["categories"][s:s + k] for n, s, k in zip(tree["categories_nodes"], tree["categories_segments"], tree["categories_sizes"])}
    at = len(nodes)
    level, slot, depth = {0: 0}, {0: at}, 0
    order = [0]
    for n in order:  # grows as it goes: breadth first
        if left[n] != -1:
            slot[left[n]], slot[right[n]] = at + len(order), at + len(order) + 1
            level[left[n]] = level[right[n]] = level[n] + 1
            order += [left[n], right[n]]
    nodes.extend([None] * len(order))
    for n in order:
        if left[n] == -1:
            depth = max(depth, level[n])
            pair = len(nodes)
            nodes[slot[n]] = leaf = (pair, 0, tree["split_conditions"][n], 0, 0, 0)
            nodes += [leaf, leaf]
            continue
        flags = (0 if tree["default_left"][n] else DEFAULT_RIGHT) | (CATEGORICAL if tree["split_type"][n] == 1 else 0)
        start = count = 0
        if tree["split_type"][n] == 1:
            members = cats.get(n, [])
            bits = [0] * (max(members) // 64 + 1 if members else 0)
            for c in members:
                bits[c // 64] |= 1 << (c % 64)
            start, count = len(words), len(bits)
            words += bits
        nodes[slot[n]] = (slot[left[n]], tree["split_indices"][n], tree["split_conditions"][n], flags, start, count)
    return depth


@njit(cache=True, nogil=True)
def _walk(x, nodes, roots, depths, cat_bits, base_score, out):  # pragma: no cover - compiled
    one = np.float32(1.0)
    base = np.float32(-math.log(one / base_score - one))  # XGBoost's ProbToMargin, in float32
    rows = x.shape[0]
    for r in range(rows):
        out[r] = base
    at = np.empty(LANES, np.int64)  # the node each of the rows walked side by side is at
    for start in range(0, rows, BLOCK):  # each tree walked for a block of rows while its nodes are in cache
        end = min(rows, start + BLOCK)
        for t in range(roots.shape[0]):
            root, depth = roots[t], depths[t]
            for r in range(start, end, LANES):
                lanes = min(LANES, end - r)
                for k in range(lanes):
                    at[k] = root
                for _ in range(depth):
                    # one step for each of up to LANES rows: a step waits on the previous one's
                    # loads, the rows' steps do not wait on each other, so the CPU overlaps them
                    for k in range(lanes):
                        node = nodes[at[k]]
                        v = x[r + k, node.feature]
                        if not node.flags & CATEGORICAL:
                            # right unless below the threshold; NaN fails `v < value` and `v == v`: the
                            # default side. Without a branch: one mispredicted a step cost ~20% of a walk
                            at[k] = node.left + (np.int32(not v < node.value) & (np.int32(v == v) | (node.flags & DEFAULT_RIGHT)))
                        elif v != v:  # missing
                            at[k] = node.left + (node.flags & DEFAULT_RIGHT)
                        else:
                            right = 0
                            if v >= 0 and v < MAX_CATEGORY:  # else not a category: left, as XGBoost's InvalidCat
                                c = np.int64(v)
                                if c < node.cat_words * 64:
                                    right = np.int64((cat_bits[node.cat_start + c // 64] >> np.uint64(c % 64)) & np.uint64(1))
                            at[k] = node.left + right
                for k in range(lanes):
                    out[r + k] += nodes[at[k]].value
    for r in range(rows):
        out[r] = one / (np.float32(math.exp(min(-out[r], np.float32(88.7)))) + one + np.float32(1e-16))
