"""The model bundle: an XGBoost model plus the manifest that says which features it needs.

A bundle is a directory `models/<name>/<version>/` holding `model.ubj` (XGBoost's own binary
format, not pickle), `trees.npz` (the same trees as arrays, what every path walks:
skewless/trees.py), `manifest.json` and the audited `training_set.parquet`. `latest` is a
symlink switched atomically. Batch and online load bundles only through `load_bundle`, which
refuses a bundle whose files were changed after training, whose feature list no longer
matches the FeatureService in the Feast registry, or whose views' definitions moved since
(skewless/definitions.py: a TTL, a transform's code), so no path can silently score with
features the model was not trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xgboost as xgb

from skewless.paths import MODEL_DIR
from skewless.trees import Forest, TreeModelError

DEFAULT_MODEL_DIR = MODEL_DIR
MODEL_NAME = "churn"
MODEL_FILE = "model.ubj"
TREES_FILE = "trees.npz"  # the model's trees as skewless/trees.py walks them, built from model.ubj at training
MANIFEST_FILE = "manifest.json"
TRAINING_SET_FILE = "training_set.parquet"
LATEST = "latest"
SCHEMA_VERSION = 1


class BundleError(Exception):
    """A bundle cannot be used; the message names the bundle and what to do."""


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: its name, Feast dtype and, for strings, the categories seen in training."""

    name: str
    dtype: str  # Feast type name: "String", "Int64", "Float64", ...
    categories: tuple[str, ...] | None = None

    @property
    def is_categorical(self) -> bool:
        return self.dtype == "String"

    @cached_property
    def category_codes(self) -> dict[str, float]:
        """Each training category's code (its index, as the model reads it), built once."""
        return {c: float(i) for i, c in enumerate(self.categories or ())}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype}
        if self.categories is not None:
            out["categories"] = list(self.categories)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureSpec":
        cats = d.get("categories")
        return cls(d["name"], d["dtype"], tuple(cats) if cats is not None else None)


@dataclass
class Bundle:
    """A loaded, verified bundle. `features` is the model's input order."""

    path: Path
    manifest: dict[str, Any]
    booster: xgb.Booster
    features: list[FeatureSpec] = field(default_factory=list)
    forest: Forest | None = None  # the trees skewless/score.py walks (trees.npz), set by load_bundle
    scoring_threads: int = 1  # one request, one thread; batch scoring sets its own

    @property
    def name(self) -> str:
        return self.manifest["model_name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def feature_service(self) -> str:
        return self.manifest["feature_service"]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def threshold(self) -> float:
        return float(self.manifest["decision_threshold"])

    @property
    def segments(self) -> list[dict[str, Any]]:
        """Risk segments as [{"name": "Low", "upper": 0.3}, ..., {"name": "High", "upper": None}]."""
        return self.manifest["risk_segments"]

    @cached_property
    def segment_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(upper bounds of every segment but the last, every segment's name) as arrays, built once:
        what skewless/score.py looks a probability's segment up in on every call."""
        return (np.array([s["upper"] for s in self.segments[:-1]], dtype=np.float64),
                np.array([s["name"] for s in self.segments]))


class Registered(NamedTuple):
    """What the registry says a FeatureService is now: what a bundle is checked against."""

    features: list[tuple[str, str]]  # (feature name, Feast dtype), in the service's order
    definitions: dict[str, str]  # view or on-demand view name -> fingerprint (skewless/definitions.py)


def registered(store, service_name: str) -> Registered:
    """The FeatureService's features and definitions, from one read of it (so both describe the same registry state)."""
    from skewless.contract import resolve

    service = _registered_service(store, service_name)
    return Registered(_features_of(service), resolve(store, service_name, service).definitions())


def service_contract(store, service_name: str) -> list[tuple[str, str]]:
    """The ordered (feature name, Feast dtype) list of a FeatureService, read from the registry."""
    return _features_of(_registered_service(store, service_name))


def _registered_service(store, service_name: str):
    from feast.errors import FeastObjectNotFoundException

    try:
        return store.get_feature_service(service_name, allow_cache=False)
    except FeastObjectNotFoundException as exc:
        raise BundleError(f"FeatureService {service_name!r} is not in the Feast registry: run `skewless apply`") from exc


def _features_of(service) -> list[tuple[str, str]]:
    return [(f.name, str(f.dtype)) for p in service.feature_view_projections for f in p.features]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_bundle(
    booster: xgb.Booster,
    manifest: dict[str, Any],
    model_dir: Path = DEFAULT_MODEL_DIR,
    training_set: Path | None = None,
    promote: bool = True,
) -> Path:
    """Write a new version directory and switch `latest` to it (unless `promote` is false: the
    scheduled pipeline promotes through a gate, orchestration/gate.py); both steps are atomic.

    The version is written to a temporary directory and renamed into place, so a crash leaves
    no half-written version; `latest` is a symlink replaced with os.replace.
    """
    name = manifest["model_name"]
    root = Path(model_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    version = manifest["version"]
    final = root / version
    if final.exists():
        raise BundleError(f"model version {version} already exists in {root}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        booster.save_model(tmp / MODEL_FILE)
        Forest.from_booster(booster).save(tmp / TREES_FILE)
        if training_set is not None:
            shutil.move(str(training_set), tmp / TRAINING_SET_FILE)
        manifest = dict(manifest, schema_version=SCHEMA_VERSION, model_sha256=_sha256(tmp / MODEL_FILE),
                        trees_sha256=_sha256(tmp / TREES_FILE))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if promote:
        point_latest(root, version)
    return final


def point_latest(root: Path, version: str) -> None:
    """Make `root/latest` name `version`, atomically (a new link, then rename): a reader, such
    as a service watching for a rollout, sees the old version or the new one, never neither."""
    link_tmp = root / f".{LATEST}.tmp"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(version)
    os.replace(link_tmp, root / LATEST)


def list_versions(model_dir: Path = DEFAULT_MODEL_DIR, name: str = MODEL_NAME) -> list[str]:
    root = Path(model_dir) / name
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != LATEST)


def load_bundle(
    version: str = LATEST,
    model_dir: Path = DEFAULT_MODEL_DIR,
    name: str = MODEL_NAME,
    store=None,
) -> Bundle:
    """Load and verify a bundle; with `store`, also check its contract against the registry.

    Refuses (BundleError, one clear line): an unknown version; a model file that is not the
    one the manifest was written for; a manifest whose features differ from the model's; and,
    given a store, a feature list that no longer matches the FeatureService in the registry.
    """
    root = Path(model_dir) / name
    path = root / version
    if not (path / MANIFEST_FILE).is_file():
        known = list_versions(model_dir, name)
        hint = f"available: {', '.join(known[-5:])}" if known else "none trained yet: run `skewless train`"
        raise BundleError(f"no model version {version!r} in {root} ({hint})")
    path = path.resolve()
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"manifest of {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"manifest of {path} has schema_version {manifest.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    model_file = path / MODEL_FILE
    if not model_file.is_file():
        raise BundleError(f"bundle {path} has no {MODEL_FILE}")
    if _sha256(model_file) != manifest.get("model_sha256"):
        raise BundleError(f"{model_file} does not match its manifest's checksum: the bundle was changed after training")
    booster = xgb.Booster()
    booster.load_model(model_file)
    booster.set_param({"nthread": 1})  # XGBoost's own predict, kept for comparisons (bench/model_call.py)
    forest = _forest(path, manifest, booster)
    features = [FeatureSpec.from_json(f) for f in manifest["features"]]
    if list(booster.feature_names or []) != [f.name for f in features]:
        raise BundleError(
            f"manifest of {path} lists features {_diff([f.name for f in features], booster.feature_names or [])} "
            "that differ from the model's: the manifest was changed after training"
        )
    if forest.n_features != len(features):
        raise BundleError(f"model of {path} reads {forest.n_features} features, its manifest lists {len(features)}")
    bundle = Bundle(path=path, manifest=manifest, booster=booster, features=features, forest=forest)
    if store is not None:
        check_contract(bundle, store)
    return bundle


def _forest(path: Path, manifest: dict[str, Any], booster: xgb.Booster) -> Forest:
    """The trees the bundle saved at training (checked like the model file), or, for a bundle
    from before they were saved or of another format, built from the booster."""
    trees = path / TREES_FILE
    if manifest.get("trees_sha256") and trees.is_file():
        if _sha256(trees) != manifest["trees_sha256"]:
            raise BundleError(f"{trees} does not match its manifest's checksum: the bundle was changed after training")
        forest = Forest.load(trees)
        if forest is not None:
            return forest
    try:
        return Forest.from_booster(booster)
    except TreeModelError as exc:
        raise BundleError(f"model of {path} cannot be scored: {exc}") from exc


def check_contract(bundle: Bundle, store=None, registry: Registered | None = None) -> Registered:
    """Raise BundleError naming the difference if the registry's FeatureService moved on: its
    features and types, or the definition of a view or on-demand view behind them.

    Compares with `registry` when given (what a service already read, see
    online/service.py:load_model), else reads it from `store`; returns what it compared with.
    A bundle from before definitions were recorded is checked on features and types only.
    """
    if registry is None:
        registry = registered(store, bundle.feature_service)
    trained = [(f.name, f.dtype) for f in bundle.features]
    if registry.features != trained:
        raise BundleError(
            f"model {bundle.name}/{bundle.version} was trained on FeatureService {bundle.feature_service!r} "
            f"but the registry's differs: {_diff(trained, registry.features)}; retrain with `skewless train`"
        )
    recorded = bundle.manifest.get("definitions")
    if recorded is not None:
        changed = sorted(n for n in recorded.keys() | registry.definitions.keys() if recorded.get(n) != registry.definitions.get(n))
        if changed:
            raise BundleError(
                f"model {bundle.name}/{bundle.version} was trained on {', '.join(changed)} as defined then, and the "
                "registry's definition has changed since (TTL, time columns, types or the transform's code): "
                "the same feature names mean other values now; retrain with `skewless train`"
            )
    return registry


def _diff(trained: list, current: list) -> str:
    missing = [t for t in trained if t not in current]
    added = [c for c in current if c not in trained]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if added:
        parts.append(f"new {added}")
    if not parts:
        parts.append("same features in another order")
    return ", ".join(parts)
