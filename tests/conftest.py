"""Shared fixtures: a private redis-server, a 1k-customer dataset and an applied Feast repo.

Everything here is real: a `redis-server` process on a free loopback port (never a
non-loopback address, never fakeredis), DuckDB through Feast, and the stock `feast apply`.
Expensive pieces are session-scoped; tests that change data make their own copies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from feast_plugins.redis_server import RedisEndpoint, throwaway_redis
from synthetic.generate import ACTIVITY_FILE, GenerateConfig, generate
from skewless.store import REDIS_ENV, REPO_DIR, open_store

SMALL = GenerateConfig(customers=1_000, seed=7)


@pytest.fixture(scope="session")
def redis_endpoint() -> RedisEndpoint:
    with throwaway_redis() as endpoint:
        os.environ[REDIS_ENV] = endpoint.feast
        yield endpoint


def copy_repo(dest: Path) -> Path:
    """A copy of feature_repo/ without its data, registry or caches."""
    shutil.copytree(REPO_DIR, dest, ignore=shutil.ignore_patterns("data", "__pycache__", "*.db"))
    (dest / "data").mkdir()
    return dest


def feast_apply(repo: Path, endpoint: RedisEndpoint) -> subprocess.CompletedProcess:
    """The stock CLI, as a user runs it: `cd repo && feast apply`."""
    env = dict(os.environ, **{REDIS_ENV: endpoint.feast})
    feast_cli = Path(sys.executable).with_name("feast")
    return subprocess.run([str(feast_cli), "apply"], cwd=repo, env=env, capture_output=True, text=True)


@pytest.fixture(scope="session")
def small_repo(tmp_path_factory, redis_endpoint) -> Path:
    """feature_repo/ copied to a temp dir, 1k customers generated into it, applied."""
    repo = copy_repo(tmp_path_factory.mktemp("small") / "feature_repo")
    generate(SMALL, repo / "data")
    result = feast_apply(repo, redis_endpoint)
    assert result.returncode == 0, result.stderr
    return repo


@pytest.fixture(scope="session")
def small_store(small_repo):
    return open_store(small_repo)


@pytest.fixture(scope="session")
def small_bundle(small_repo, small_store, tmp_path_factory):
    """A model trained on the 1k data, in its own model dir: (TrainResult, model_dir)."""
    from training.train import train

    model_dir = tmp_path_factory.mktemp("models")
    return train(small_store, small_repo, model_dir), model_dir


@pytest.fixture(scope="session")
def live(tmp_path_factory, redis_endpoint):
    """Data ending today, applied, a bundle trained on it, and Redis materialized up to now.

    Activity is also loaded from 120 days back (not just the last TTL), as a long-running Redis
    holds values that have since expired: that is what the online TTL must handle.
    """
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from feast_plugins.materialize import materialize
    from training.train import train

    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    repo = copy_repo(tmp_path_factory.mktemp("live") / "feature_repo")
    generate(GenerateConfig(customers=600, seed=11, end=today), repo / "data")
    assert feast_apply(repo, redis_endpoint).returncode == 0
    store = open_store(repo)
    model_dir = tmp_path_factory.mktemp("live_models")
    result = train(store, repo, model_dir)
    now = datetime.now(timezone.utc)
    materialize(store, now)  # first run: each view from now - its TTL
    store.materialize(start_date=now - timedelta(days=120), end_date=now, feature_views=["customer_activity"])
    return SimpleNamespace(repo=repo, store=store, model_dir=model_dir, bundle=result.bundle, materialized_at=now)


@pytest.fixture(scope="session")
def known(live):
    """A customer with fresh features, one whose only activity has expired, and an unknown ID."""
    from datetime import timedelta

    import pandas as pd

    act = pd.read_parquet(live.repo / "data" / ACTIVITY_FILE)
    last = act.groupby("customer_id")["event_timestamp"].max()
    now = pd.Timestamp(live.materialized_at)
    fresh = int(last[last > now - timedelta(days=3)].index[0])
    expired = int(last[(last < now - timedelta(days=35)) & (last > now - timedelta(days=100))].index[0])
    return {"fresh": fresh, "expired": expired, "unknown": 10**12}
