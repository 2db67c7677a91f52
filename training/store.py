"""Open the Feast feature store from any working directory.

Every path (training, batch, online, tests) opens the store here, so they all read the same
`feature_store.yaml` the stock `feast` CLI reads from inside `feature_repo/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from feast import FeatureStore
from feast.repo_config import RepoConfig

REPO_DIR = Path(__file__).resolve().parent.parent / "feature_repo"
REDIS_ENV = "SKEWLESS_REDIS"  # the variable feature_store.yaml takes the Redis connection from


def open_store(repo_path: Path | str = REPO_DIR) -> FeatureStore:
    """A FeatureStore for `repo_path`, with the SQLite registry path resolved against the repo.

    The yaml gives `sqlite:///data/registry.db`, relative, so the stock CLI run from inside the
    repo finds it; SQLite itself would resolve it against the current directory, so it is made
    absolute here. `${SKEWLESS_REDIS}` must be set (see online_store/redis_server.py); when it is not,
    the online store is pointed at a placeholder that fails on first use, so offline-only work
    (training, batch) needs no Redis.
    """
    repo = Path(repo_path).resolve()
    text = (repo / "feature_store.yaml").read_text()
    env = dict(os.environ)
    env.setdefault(REDIS_ENV, "127.0.0.1:6379")
    raw = yaml.safe_load(_expand(text, env))
    registry = raw.get("registry")
    if isinstance(registry, dict):
        path = registry.get("path", "")
        prefix = "sqlite:///"
        if path.startswith(prefix) and not path[len(prefix):].startswith("/"):
            registry["path"] = prefix + str(repo / path[len(prefix):])
            (repo / path[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(**raw)
    config.repo_path = repo
    return FeatureStore(config=config, repo_path=str(repo))


def _expand(text: str, env: dict[str, str]) -> str:
    """os.path.expandvars over a given mapping (Feast expands from os.environ the same way)."""
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        return os.path.expandvars(text)
    finally:
        os.environ.clear()
        os.environ.update(saved)
