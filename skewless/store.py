"""Open the Feast feature store from any working directory.

Every path (training, batch, online, tests) opens the store here, so they all read the same
`feature_store.yaml` the stock `feast` CLI reads. Nothing about the repo is rewritten: the
registry path is resolved against the repo by Feast itself (feast_plugins/registry_store.py), so a
notebook's `FeatureStore(repo_path="feature_repo")` sees exactly what this function opens.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from feast import FeatureStore

from skewless.paths import REDIS_ENV, REPO_DIR  # noqa: F401  (REDIS_ENV: where callers look for it)

# Library chatter that says nothing to a user of this project. Set after importing Feast, whose
# modules put `simplefilter("once", ...)` rules in front of any set before.
warnings.filterwarnings("ignore", message="fetch_arrow_table", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="On demand feature view is an experimental", category=RuntimeWarning)



def open_store(repo_path: Path | str = REPO_DIR) -> FeatureStore:
    """A FeatureStore for `repo_path` (Feast's own loader: `${VAR}`s come from the environment).

    `${SKEWLESS_REDIS}` need not be set for offline-only work (training, batch): the online
    store fails on first use with one line saying what to set (feast_plugins/ttl_store.py).
    """
    repo = Path(repo_path).resolve()
    if not (repo / "feature_store.yaml").is_file():
        raise FileNotFoundError(2, "no feature_store.yaml here: pass the Feast repository (feature_repo/)", str(repo))
    return FeatureStore(repo_path=str(repo))
