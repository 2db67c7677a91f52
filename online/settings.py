"""Service settings, from the environment (prefix SKEWLESS_) or a .env file."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from training.bundle import DEFAULT_MODEL_DIR
from training.store import REPO_DIR

PROJECT_DIR = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKEWLESS_", env_file=".env", extra="ignore", protected_namespaces=())

    repo_path: Path = REPO_DIR
    model_dir: Path = DEFAULT_MODEL_DIR
    model_version: str = "latest"
    # Bounded Redis waits: a request fails in well under a second when Redis is down or slow.
    redis_timeout_s: float = 0.25
    max_batch: int = 1_000
    feature_log_dir: Path = PROJECT_DIR / "data" / "feature_log"
    feature_log_queue: int = 100_000  # rows held in memory at most; more are dropped and counted
    feature_log_flush_rows: int = 5_000
    feature_log_flush_s: float = 5.0
