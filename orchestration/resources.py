"""What the pipeline's steps share: where the repo, the bundles and the outputs are, and which Redis.

One Dagster resource, configured from the same environment variables the commands read (the
README's configuration table), so `dagster dev` in the project root runs against what `skewless
score` and `skewless materialize` would. Opening the store and naming Redis go through the
project's own functions (skewless/store.py, feast_plugins/redis_server.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from skewless.paths import FEATURE_LOG_DIR, MODEL_DIR, PREDICTIONS_DB, REPO_DIR

class NoRedisNamed(dg.Failure):
    """An online step with no Redis named: a throwaway one would be loaded and thrown away."""

class SkewlessResource(dg.ConfigurableResource):
    """The project's paths and its Redis, for every step of the pipeline."""

    repo_path: str = Field(default=str(REPO_DIR), description="The Feast repository (SKEWLESS_REPO_PATH).")
    model_dir: str = Field(default=str(MODEL_DIR), description="Where bundles live (SKEWLESS_MODEL_DIR).")
    predictions_db: str = Field(default=str(PREDICTIONS_DB), description="The batch job's DuckDB file (SKEWLESS_PREDICTIONS_DB).")
    redis_url: str | None = Field(default=None, description="The online store (REDIS_URL); the online steps fail without one.")
    feature_log_dir: str = Field(default=str(FEATURE_LOG_DIR), description="What the service logged (SKEWLESS_FEATURE_LOG_DIR), for the skew check.")
    score_max_age_hours: float = Field(default=26.0, description="Freshness budget of the newest full batch run: a daily job plus slack.")
    promotion_tolerance: float = Field(default=0.01, description="How much lower a new bundle's validation ROC-AUC may be than the serving one's.")
    parity_sample: int = Field(default=200, description="Customers compared online against batch by the parity check and the gate.")
    psi_warn: float = Field(default=0.25, description="PSI above which the drift check warns.")
    auc_tolerance: float = Field(default=0.05, description="How far a week's live ROC-AUC may fall below the serving bundle's validation before the quality check warns.")

    @property
    def repo(self) -> Path:
        return Path(self.repo_path)

    @property
    def models(self) -> Path:
        return Path(self.model_dir)

    @property
    def db(self) -> Path:
        return Path(self.predictions_db)

    @property
    def max_age(self) -> timedelta:
        return timedelta(hours=self.score_max_age_hours)

    def store(self):
        """The FeatureStore (offline work needs no Redis; online work runs inside `online()`)."""
        from skewless.store import open_store

        return open_store(self.repo)

    @contextlib.contextmanager
    def online(self) -> Iterator[object]:
        """The named Redis, exported for Feast while the block runs; its endpoint.

        A Redis that does not answer raises the project's RedisUnavailable, which the steps'
        retry policy retries with backoff (a restart, a failover)."""
        from feast_plugins.redis_server import redis_for_feast

        if not self.redis_url:
            raise NoRedisNamed("no Redis named: set REDIS_URL to the online store the pipeline loads and checks")
        previous = os.environ.get("REDIS_URL")
        os.environ["REDIS_URL"] = self.redis_url
        try:
            with redis_for_feast() as endpoint:
                yield endpoint
        finally:
            if previous is None:
                os.environ.pop("REDIS_URL", None)
            else:
                os.environ["REDIS_URL"] = previous

def from_environment() -> SkewlessResource:
    """The resource as the environment configures it: the commands' variables, their defaults."""
    return SkewlessResource(
        repo_path=os.environ.get("SKEWLESS_REPO_PATH") or str(REPO_DIR),
        model_dir=os.environ.get("SKEWLESS_MODEL_DIR") or str(MODEL_DIR),
        predictions_db=os.environ.get("SKEWLESS_PREDICTIONS_DB") or str(PREDICTIONS_DB),
        redis_url=os.environ.get("REDIS_URL") or None,
        feature_log_dir=os.environ.get("SKEWLESS_FEATURE_LOG_DIR") or str(FEATURE_LOG_DIR),
    )
