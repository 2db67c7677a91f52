"""Service settings, from the environment (prefix SKEWLESS_) or a .env file in the working directory.

Every worker process reads them when it starts, so `skewless serve` passes its options on as
environment variables. Defaults suit one machine; the Redis waits are what keep a request from
hanging when Redis is down or slow.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from skewless.paths import FEATURE_LOG_DIR, MODEL_DIR, REPO_DIR



class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKEWLESS_", env_file=".env", extra="ignore", protected_namespaces=())

    repo_path: Path = Field(REPO_DIR, description="Feast repository (feature_store.yaml).")
    model_dir: Path = Field(MODEL_DIR, description="Where model bundles live (models/<name>/<version>).")
    model_version: str = Field("latest", description="Bundle version to serve, or `latest`.")
    # SKEWLESS_REDIS is also what feature_store.yaml's ${SKEWLESS_REDIS} expands to: one variable.
    redis: str | None = Field(None, description="Feast Redis connection string host:port[,db=N,...]; default: the yaml's.")
    redis_timeout_s: float = Field(0.2, gt=0, description="Socket connect/read timeout per Redis command.")
    redis_retries: int = Field(1, ge=0, description="Immediate retries of a failed Redis command (a dropped idle connection).")
    redis_cooldown_s: float = Field(1.0, ge=0, description="After a Redis failure, answer 503 at once for this long, then try again.")
    feature_max_lag: str | None = Field(
        None, description="Freshness budget of the online features: `36h` for every view, or `customer_activity=36h,customer_profile=3d`; "
        "default each view's `cadence` tag plus a day. /ready is 503 while a view's watermark is older.")
    score_max_age: str | None = Field(
        None, description="Freshness budget of stored scores: `8d` for every model, or `churn=8d,other=2h`; default the scores view's "
        "`cadence` tag plus a day. Older scores are answered as stale, and /ready is 503 while the newest full run is older.")
    api_keys: str | None = Field(None, description="API keys for /predict* and /scores*, comma-separated (rotate: add the new, then drop the old).")
    api_keys_file: Path | None = Field(None, description="A file of API key digests, `sha256:<hex>` a line (`skewless api-key --file F`); re-read on change.")
    metrics_need_key: bool = Field(False, description="Also require an API key for /metrics (Prometheus then sends it as a bearer token).")
    allow_open: bool = Field(False, description="Serve on a non-loopback address with no API key configured (anyone who reaches the port may call).")
    model_poll_s: float = Field(2.0, gt=0, description="How often the `latest` link is checked for a new bundle (rolled out without a restart).")
    batch_max_ids: int = Field(64, ge=1, description="POST /predict requests scored together at most (dynamic batching); 1 = one at a time.")
    batch_wait_ms: float = Field(3.0, ge=0, le=50, description="Under a steady stream of requests (two or more a wait on average), how long a batch may wait for more "
                                 "(online/batching.py): less CPU a request, more latency; 0: only those ready at once.")
    predict_fast_path: bool = Field(True, description="Answer plain POST /predict and /predict/batch requests (IDs as JSON) before FastAPI's routing, "
                                    "with the route's own answers for ~0.2 ms less CPU (online/middleware.py); false: every request through the route.")
    max_body_bytes: int = Field(256 * 1024, gt=0, description="Larger request bodies get 413 (1,000 IDs take ~20 KB).")
    feature_log: bool = Field(True, description="Log what was served (Parquet under feature_log_dir).")
    feature_log_dir: Path = Field(FEATURE_LOG_DIR, description="Feature-log root (date=YYYY-MM-DD/part-*.parquet).")
    feature_log_max_rows: int = Field(200_000, gt=0, description="Rows held in memory at most; more are dropped and counted.")
    feature_log_flush_s: float = Field(1.0, gt=0, description="How often buffered rows are written (a Parquet row group).")
    feature_log_rotate_rows: int = Field(1_000_000, gt=0, description="Rows per file before a new file starts.")
    feature_log_rotate_s: float = Field(300.0, gt=0, description="Seconds per file before a new file starts.")

    @field_validator("feature_max_lag", "score_max_age")
    @classmethod
    def _budgets(cls, value: str | None) -> str | None:
        """`36h` or `name=36h,other=3d`, read as the service reads it, so a bad one stops start-up with its reason."""
        from feast_plugins.watermark import parse_budgets

        parse_budgets(value)  # ValueError naming the budget and the expected form
        return value
