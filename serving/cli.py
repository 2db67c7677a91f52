"""`skewless serve`: the online service on uvicorn, with a Redis found or started."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes; each loads the model once. About one per core.")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help="Feast repo (default: feature_repo/).")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Model bundles (default: models/).")
@click.option("--model", "model_version", default=None, help="Bundle version to serve (default: latest).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning", show_default=True)
def serve(host: str, port: int, workers: int, repo: Path | None, model_dir: Path | None, model_version: str | None, log_level: str) -> None:
    """Serve POST /predict and /predict/batch, GET /health, /ready, /metrics and /docs.

    Uses the Redis named by REDIS_URL or SKEWLESS_REDIS; with none named, starts a private one
    and loads it first. Other settings come from SKEWLESS_* environment variables (serving/settings.py).
    """
    import uvicorn

    from online_store.redis_server import redis_for_feast

    # Workers read their settings from the environment when they start.
    for name, value in (("SKEWLESS_REPO_PATH", repo), ("SKEWLESS_MODEL_DIR", model_dir), ("SKEWLESS_MODEL_VERSION", model_version)):
        if value is not None:
            os.environ[name] = str(Path(value).resolve() if isinstance(value, Path) else value)
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # one /metrics for all workers (prometheus-client multiprocess mode, set before they start)
        metrics_dir = tempfile.mkdtemp(prefix="skewless-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        with redis_for_feast(must_answer=False) as endpoint:  # a named Redis that is down: not ready until it answers
            if endpoint.throwaway:
                _load_throwaway(endpoint, repo)
            state = "" if endpoint.ping() else " (not answering yet: /ready is 503 until it does)"
            click.echo(f"online store: redis {endpoint.host}:{endpoint.port} db {endpoint.db}{state}", err=True)
            click.echo(f"serving on http://{host}:{port} ({workers} worker{'s' if workers > 1 else ''}); docs at /docs", err=True)
            uvicorn.run(
                "serving.app:create_app", factory=True, host=host, port=port, workers=workers,
                loop="uvloop", http="httptools", log_level=log_level, access_log=False,  # /metrics has per-route counts
                timeout_graceful_shutdown=30,
                # uvicorn kills a worker that does not answer its ping within this; a worker
                # importing Feast and XGBoost on a busy machine can hold the GIL for seconds
                timeout_worker_healthcheck=120,
            )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _load_throwaway(endpoint, repo: Path | None) -> None:
    """No Redis named: the private one starts empty, so load it before serving (what a first try wants)."""
    from datetime import datetime, timezone

    from online_store.materialize import materialize
    from training.paths import REPO_DIR
    from training.store import open_store

    click.echo(f"no Redis named (REDIS_URL or SKEWLESS_REDIS): started a private redis-server on {endpoint.host}:{endpoint.port}, "
               "loading it up to now; it is gone when the service stops", err=True)
    summary = materialize(open_store(repo or REPO_DIR), datetime.now(timezone.utc))
    click.echo(f"loaded {summary['rows']:,} rows of {len(summary['views'])} views in {summary['seconds']:.1f}s", err=True)
