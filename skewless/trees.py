"""The model's trees as a few flat arrays, and the compiled loops that score them: every path's scorer.

XGBoost's own predict spends ~35 us a call before it walks a tree (its C API builds a proxy
matrix, parses JSON arguments, sets up the predictor), and reaches its trees through ~600 heap
objects that a service's other work evicts from the caches between requests. Here the trees
are copied once, when a bundle is loaded, into one array of nodes (~750 KB for 599 trees of
depth 4), and scored by loops that numba compiles (cached beside this file):

- QuickScorer (Lucchese et al., SIGIR 2015), for forests of at most 64 leaves a tree (depth
  <= 6, what this project trains): instead of walking each tree node by node, each feature's
  splits are visited in threshold order, and every split a row's value sends right rules out
  the leaves of its left side in its tree's 64-bit mask; a tree's exit leaf is then the
  leftmost leaf not ruled out. No step waits on the one before, and the tables are ~210 KB
  instead of the nodes' 750 KB; a categorical split is found through the row's category
  (the splits that send each category right are listed, ~7-10% less a call than
  testing every categorical split). On the project's rows: one row 9 us instead of the walk's 20
  hot (119 instead of 227 after 20 ms idle); 100 rows 0.61 ms instead of 0.73 hot, 0.72
  instead of 0.90 after idle; XGBoost's prepared C call 90 / 737 hot (bench/model_call.py,
  2026-12-06; on random rows, which send fewer splits right, 100 rows 0.28 against 0.70).
- the walk, for any other forest: each tree walked node by node, eight rows side by side.

Both follow XGBoost's CPU predictor's rules, so the probabilities are XGBoost's bit for bit
(checked on every model at training and recorded in its manifest: training/train.py; and by
tests/test_trees.py, for both):

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

FORMAT = 1  # of the arrays below as saved in a bundle: a change to them (or to _place_tree) must bump it
NODE = np.dtype([("left", np.int32), ("feature", np.int32), ("value", np.float32), ("flags", np.int32),
                 ("cat_start", np.int32), ("cat_words", np.int32)])  # value: the threshold, or a leaf's value
PARALLEL_ROWS = 8192  # fewer rows a thread are walked in the calling thread alone
BLOCK = 64  # rows walked through one tree before the next tree (the walk)
LANES = 8  # rows walked through a tree side by side by the walk (16: slower; 4: 605 against 8's ~500 us for 100 rows)
MAX_LEAVES = 64  # a tree's leaves in one uint64 mask: QuickScorer's limit
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
    quick: QuickScorer | None = field(init=False, repr=False, compare=False)  # None: a tree of more than MAX_LEAVES leaves

    def __post_init__(self):
        object.__setattr__(self, "quick", QuickScorer.of(self))

    def walk_only(self) -> "Forest":
        """The same trees scored by the walk alone, what a forest with a tree of more than
        MAX_LEAVES leaves gets (tests/test_trees.py and bench/model_call.py hold the two loops
        side by side)."""
        walked = Forest(self.nodes, self.roots, self.depths, self.cat_bits, self.base_score, self.n_features)
        object.__setattr__(walked, "quick", None)
        return walked

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
        """Write the arrays (a bundle keeps them beside its model: skewless/bundle.py)."""
        with open(path, "wb") as f:
            np.savez(f, format=np.int32(FORMAT), nodes=self.nodes, roots=self.roots, depths=self.depths, cat_bits=self.cat_bits,
                     base_score=self.base_score, n_features=np.int32(self.n_features))

    @classmethod
    def load(cls, path: Path) -> "Forest | None":
        """The arrays `save` wrote, or None when they are of another format than this code walks.

        ~1 ms, against ~35 ms to build them from the booster, most of it holding the GIL
        (a 1 MB JSON parse, then Python over every node): what a worker loading a new bundle
        beside the requests it answers must not do (online/rollout.py)."""
        with np.load(path, allow_pickle=False) as a:
            if int(a["format"]) != FORMAT or a["nodes"].dtype != NODE:
                return None
            return cls(a["nodes"], a["roots"], a["depths"], a["cat_bits"], np.float32(a["base_score"]), int(a["n_features"]))

    def probabilities(self, matrix: np.ndarray, threads: int = 1) -> np.ndarray:
        """P(class 1) for each row of a C-contiguous float32 matrix (NaN = missing), as float32.

        Scored by QuickScorer, or by the walk for a forest QuickScorer cannot hold (`quick` is
        None). `threads` > 1 splits a large matrix into that many row ranges scored at once (both
        loops release the GIL); a row's result does not depend on the split.
        """
        if matrix.dtype != np.float32 or not matrix.flags.c_contiguous or matrix.ndim != 2:
            raise ValueError("the scorer takes a C-contiguous 2-D float32 matrix (what skewless/score.py:feature_matrix builds)")
        if matrix.shape[1] != self.n_features:
            raise ValueError(f"the model reads {self.n_features} features, the matrix has {matrix.shape[1]} columns")
        out = np.empty(matrix.shape[0], dtype=np.float32)
        parts = min(threads, len(matrix) // PARALLEL_ROWS)
        if parts <= 1:
            self._score(matrix, out)
            return out
        from concurrent.futures import ThreadPoolExecutor

        bounds = np.linspace(0, len(matrix), parts + 1).astype(int)

        def score(i: int) -> None:
            a, b = bounds[i], bounds[i + 1]
            self._score(matrix[a:b], out[a:b])

        with ThreadPoolExecutor(parts, thread_name_prefix="score") as pool:
            list(pool.map(score, range(parts)))
        return out

    def _score(self, x: np.ndarray, out: np.ndarray) -> None:
        q = self.quick
        if q is None:
            _walk(x, self.nodes, self.roots, self.depths, self.cat_bits, self.base_score, out)
        else:
            _quick(x, q.start, q.threshold, q.tree, q.mask, q.missing_start, q.missing_tree, q.missing_mask,
                   q.codes, q.code_base, q.code_start, q.code_tree, q.code_mask, q.leaf_start, q.leaf_value,
                   q.all_leaves, self.base_score, out)


@dataclass(frozen=True)
class QuickScorer:
    """A forest's splits regrouped for QuickScorer, built from its nodes when it loads (~3 ms).

    Each split rules out, when a row goes right of it, the leaves of its left side: `mask` has
    those bits cleared in its tree's leaf mask (leaves numbered left to right, bit 0 leftmost).
    A categorical split sends right the categories in its set: they are listed by category, so
    that a row's category finds the splits it goes right of in one range instead of every
    categorical split being tested (339 in the project's model: ~1.6 of a row's ~9 us).
    """

    start: np.ndarray  # numerical splits of feature f: [start[f], start[f + 1]), thresholds ascending
    threshold: np.ndarray
    tree: np.ndarray
    mask: np.ndarray
    missing_start: np.ndarray  # the splits (numerical and categorical) whose missing side is right, by feature the same
    # way, one entry per (feature, tree) (_one_mask_a_tree)
    missing_tree: np.ndarray
    missing_mask: np.ndarray
    codes: np.ndarray  # categorical splits: feature f's category codes c in [0, codes[f]) that some split sends right
    code_base: np.ndarray  # ... and the splits code c sends right: [code_start[k], code_start[k + 1]), k = code_base[f] + c
    code_start: np.ndarray
    code_tree: np.ndarray
    code_mask: np.ndarray
    leaf_start: np.ndarray  # tree t's leaves' values: leaf_value[leaf_start[t]:leaf_start[t + 1]], left to right
    leaf_value: np.ndarray
    all_leaves: np.ndarray  # tree t's mask before any split rules a leaf out

    @classmethod
    def of(cls, forest: Forest) -> "QuickScorer | None":
        """The tables for `forest`, or None when one of its trees has more than MAX_LEAVES leaves."""
        nodes = forest.nodes
        fits, tree_of, mask, leaf_start, leaf_value, all_leaves = _split_masks(nodes, forest.roots)
        if not fits:
            return None
        splits = np.flatnonzero(tree_of >= 0)
        numeric = splits[(nodes["flags"][splits] & CATEGORICAL) == 0]
        numeric = numeric[np.lexsort((nodes["value"][numeric], nodes["feature"][numeric]))]  # by feature, then threshold
        categorical = splits[(nodes["flags"][splits] & CATEGORICAL) != 0]
        missing = splits[(nodes["flags"][splits] & DEFAULT_RIGHT) != 0]
        missing_feature, missing_tree, missing_mask = _one_mask_a_tree(nodes["feature"][missing], tree_of[missing], mask[missing])
        features = np.arange(forest.n_features + 1)
        codes, code_base, code_start, code_split = _category_lists(nodes[categorical], forest.cat_bits, forest.n_features)
        return cls(
            np.searchsorted(nodes["feature"][numeric], features).astype(np.int64), nodes["value"][numeric].copy(),
            tree_of[numeric], mask[numeric],
            np.searchsorted(missing_feature, features).astype(np.int64), missing_tree, missing_mask,
            codes, code_base, code_start, tree_of[categorical][code_split], mask[categorical][code_split],
            leaf_start, leaf_value, all_leaves,
        )


def _one_mask_a_tree(feature: np.ndarray, tree: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The missing-side splits by feature, then tree, with one mask per (feature, tree): the AND
    of that tree's masks for the feature. A missing value goes right at all of them at once, so
    one step a tree does what several did (on the project's model 4,921 -> 3,237 entries; a row
    with its activity view absent applies ~1,260 instead of ~1,890)."""
    order = np.lexsort((tree, feature))
    feature, tree, mask = feature[order], tree[order], mask[order]
    if len(feature) == 0:
        return feature, tree, mask
    first = np.flatnonzero(np.r_[True, (feature[1:] != feature[:-1]) | (tree[1:] != tree[:-1])])
    return feature[first], tree[first], np.bitwise_and.reduceat(mask, first)


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


@njit(cache=True, nogil=True, inline="always")
def _categorical_side(node, v, cat_bits):  # pragma: no cover - compiled
    """1 (right) or 0 (left): a categorical split's side for value v, as XGBoost takes it."""
    if v != v:  # missing
        return np.int64(node.flags & DEFAULT_RIGHT)
    if v >= 0 and v < MAX_CATEGORY:  # else not a category: left, as XGBoost's InvalidCat
        c = np.int64(v)
        if c < node.cat_words * 64:
            return np.int64((cat_bits[node.cat_start + c // 64] >> np.uint64(c % 64)) & np.uint64(1))
    return np.int64(0)


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
                        else:
                            at[k] = node.left + _categorical_side(node, v, cat_bits)
                for k in range(lanes):
                    out[r + k] += nodes[at[k]].value
    for r in range(rows):
        out[r] = one / (np.float32(math.exp(min(-out[r], np.float32(88.7)))) + one + np.float32(1e-16))


@njit(cache=True)
def _split_masks(nodes, roots):  # pragma: no cover - compiled
    """For QuickScorer: each split's tree and mask (tree -1 for leaves and their copies), and
    each tree's leaves left to right. `fits` is False when a tree has more than MAX_LEAVES leaves.

    A node is a leaf when its `left` names its own pair of copies (see _place_tree)."""
    n, trees = nodes.shape[0], roots.shape[0]
    tree_of = np.full(n, -1, np.int32)
    mask = np.zeros(n, np.uint64)
    leaf_start = np.zeros(trees + 1, np.int64)
    leaf_value = np.empty(n, np.float32)
    all_leaves = np.zeros(trees, np.uint64)
    order = np.empty(n, np.int64)  # a tree's nodes, breadth first
    under = np.zeros(n, np.int64)  # leaves below a node (1 for a leaf)
    first = np.zeros(n, np.int64)  # the number of a node's leftmost leaf in its tree
    one = np.uint64(1)
    count = 0
    for t in range(trees):
        leaf_start[t] = count
        order[0], m, k = roots[t], 1, 0
        while k < m:
            i = order[k]
            k += 1
            left = nodes[i].left
            if nodes[left].left != left:  # a split: its children are left and left + 1
                order[m], order[m + 1] = left, left + 1
                m += 2
        for k in range(m - 1, -1, -1):
            i = order[k]
            left = nodes[i].left
            under[i] = 1 if nodes[left].left == left else under[left] + under[left + 1]
        leaves = under[roots[t]]
        if leaves > MAX_LEAVES:
            return False, tree_of, mask, leaf_start, leaf_value[:0].copy(), all_leaves
        first[roots[t]] = 0
        for k in range(m):
            i = order[k]
            left = nodes[i].left
            if nodes[left].left == left:
                leaf_value[count + first[i]] = nodes[i].value
            else:
                first[left], first[left + 1] = first[i], first[i] + under[left]
                mask[i] = ~(((one << np.uint64(under[left])) - one) << np.uint64(first[i]))  # rules out the left side's leaves
                tree_of[i] = t
        all_leaves[t] = ~np.uint64(0) if leaves == 64 else (one << np.uint64(leaves)) - one
        count += leaves
    leaf_start[trees] = count
    return True, tree_of, mask, leaf_start, leaf_value[:count].copy(), all_leaves


@njit(cache=True)
def _category_lists(categorical, cat_bits, n_features):  # pragma: no cover - compiled
    """For QuickScorer: per feature f, `codes[f]` (one past the largest category any of its
    categorical splits lists) and, for each category c below it, the categorical splits that
    send c right: `split[code_start[k]:code_start[k + 1]]` (indexes into `categorical`),
    k = code_base[f] + c. Other categories (negative, past the lists, unlisted) go left of every
    split, as `_categorical_side` takes them."""
    codes = np.zeros(n_features, np.int64)
    for node in categorical:
        codes[node.feature] = max(codes[node.feature], node.cat_words * 64)
    code_base = np.zeros(n_features, np.int64)
    total = 0
    for f in range(n_features):
        code_base[f] = total
        total += codes[f]
    counts = np.zeros(total + 1, np.int64)
    for k in range(categorical.shape[0]):  # first how many splits each category has, then where
        node = categorical[k]
        for c in range(node.cat_words * 64):
            if _categorical_side(node, np.float64(c), cat_bits):  # the walk's own rule
                counts[code_base[node.feature] + c + 1] += 1
    code_start = np.cumsum(counts)
    split = np.empty(code_start[total], np.int64)
    filled = code_start[:total].copy()
    for k in range(categorical.shape[0]):
        node = categorical[k]
        for c in range(node.cat_words * 64):
            if _categorical_side(node, np.float64(c), cat_bits):
                at = code_base[node.feature] + c
                split[filled[at]] = k
                filled[at] += 1
    return codes, code_base, code_start, split


@njit(cache=True, nogil=True)
def _quick(x, start, threshold, tree, mask, missing_start, missing_tree, missing_mask, codes, code_base, code_start,
           code_tree, code_mask, leaf_start, leaf_value, all_leaves, base_score, out):  # pragma: no cover - compiled
    one = np.float32(1.0)
    base = np.float32(-math.log(one / base_score - one))  # XGBoost's ProbToMargin, in float32
    left_in = np.empty(all_leaves.shape[0], np.uint64)  # per tree: the leaves no split has ruled out yet
    for r in range(x.shape[0]):
        left_in[:] = all_leaves
        for f in range(x.shape[1]):
            v = x[r, f]
            if v != v:  # missing: right at the splits whose default side is right
                for i in range(missing_start[f], missing_start[f + 1]):
                    left_in[missing_tree[i]] &= missing_mask[i]
                continue
            i, end = start[f], start[f + 1]
            while i < end and threshold[i] <= v:  # right at every numerical split whose threshold is not above v
                left_in[tree[i]] &= mask[i]
                i += 1
            # right at the categorical splits whose set holds v's category (XGBoost: the integer
            # part of a value from 0 to below MAX_CATEGORY); every other value goes left
            if codes[f] and v >= 0 and v < MAX_CATEGORY and np.int64(v) < codes[f]:
                k = code_base[f] + np.int64(v)
                for i in range(code_start[k], code_start[k + 1]):
                    left_in[code_tree[i]] &= code_mask[i]
        margin = base
        for t in range(all_leaves.shape[0]):  # the exit leaf: the leftmost left in; added in tree order
            margin += leaf_value[leaf_start[t] + trailing_zeros(left_in[t])]
        out[r] = one / (np.float32(math.exp(min(-margin, np.float32(88.7)))) + one + np.float32(1e-16))
