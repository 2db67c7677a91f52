"""`skewless serve`: the online service on uvicorn, with a Redis found or started."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from pathlib import Path

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes; each loads the model once. About one per core.")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None, help="Feast repo (default: feature_repo/).")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Model bundles (default: models/).")
@click.option("--model", "model_version", default=None, help="Bundle version to serve (default: latest).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning", show_default=True)
@click.option("--allow-open", is_flag=True, help="Serve a non-loopback address with no API key (SKEWLESS_ALLOW_OPEN=1 too).")
def serve(host: str, port: int, workers: int, repo: Path | None, model_dir: Path | None, model_version: str | None, log_level: str,
          allow_open: bool) -> None:
    """Serve POST /predict and /predict/batch, /scores, GET /health, /ready, /metrics and /docs.

    Uses the Redis named by REDIS_URL or SKEWLESS_REDIS; with none named, starts a private one
    and loads it first. API keys come from SKEWLESS_API_KEYS or SKEWLESS_API_KEYS_FILE; other
    settings from SKEWLESS_* environment variables (online/settings.py).
    """
    from pydantic import ValidationError

    from online.auth import ApiKeys, KeyFileError, is_loopback
    from online.settings import Settings

    if allow_open:
        os.environ["SKEWLESS_ALLOW_OPEN"] = "1"
    # Workers read their settings from the environment when they start.
    for name, value in (("SKEWLESS_REPO_PATH", repo), ("SKEWLESS_MODEL_DIR", model_dir), ("SKEWLESS_MODEL_VERSION", model_version)):
        if value is not None:
            os.environ[name] = str(Path(value).resolve() if isinstance(value, Path) else value)
    try:
        settings = Settings()
        keys = ApiKeys(settings.api_keys, settings.api_keys_file)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise click.ClickException(f"setting SKEWLESS_{str(first['loc'][0]).upper()}: {first['msg'].removeprefix('Value error, ')}") from None
    if not keys.configured and not is_loopback(host) and not settings.allow_open:
        raise click.ClickException(f"refusing to serve {host} with no API key: set SKEWLESS_API_KEYS or SKEWLESS_API_KEYS_FILE "
                                   "(`skewless api-key --file FILE` makes one), or pass --allow-open to run open")
    taken = _cannot_bind(host, port)
    if taken:  # before a private Redis is started and loaded for nothing
        raise click.ClickException(f"cannot listen on {host}:{port}: {taken}")
    from skewless.bundle import BundleError, load_bundle

    try:  # what each worker loads, checked once here: a missing or altered bundle is one line, not a worker's traceback
        load_bundle(settings.model_version, settings.model_dir)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    import uvicorn

    from feast_plugins.redis_server import redis_for_feast

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
            click.echo(f"online store: redis {endpoint.where} db {endpoint.db}{state}", err=True)
            access = "API key required for /predict and /scores" if keys.configured else "open: no API key configured"
            click.echo(f"serving on http://{host}:{port} ({workers} worker{'s' if workers > 1 else ''}; {access}); docs at /docs", err=True)
            uvicorn.run(
                "online.app:create_app", factory=True, host=host, port=port, workers=workers,
                loop="uvloop", http="httptools", log_level=log_level, access_log=False,  # /metrics has per-route counts
                timeout_graceful_shutdown=30,
                # uvicorn kills a worker that does not answer its ping within this; a worker
                # importing Feast and XGBoost on a busy machine can hold the GIL for seconds
                timeout_worker_healthcheck=120,
            )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _cannot_bind(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on host:port (taken, not this machine's address), with the
    fix, or None. Bound as uvicorn binds (SO_REUSEADDR), then released."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror}): check --host"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            fix = "pick another with --port" if exc.errno == errno.EADDRINUSE else "check --host"
            return f"{exc.strerror or exc} ({fix})"
    return None


def _load_throwaway(endpoint, repo: Path | None) -> None:
    """No Redis named: the private one starts empty, so load it before serving (what a first try wants)."""
    from datetime import datetime, timezone

    from feast_plugins.materialize import materialize
    from skewless.paths import REPO_DIR
    from skewless.store import open_store

    click.echo(f"no Redis named (REDIS_URL or SKEWLESS_REDIS): started a private redis-server on {endpoint.where}, "
               "loading it up to now; it is gone when the service stops", err=True)
    summary = materialize(open_store(repo or REPO_DIR), datetime.now(timezone.utc))
    click.echo(f"loaded {summary['rows']:,} rows of {len(summary['views'])} views in {summary['seconds']:.1f}s", err=True)


@click.command("api-key")
@click.option("--file", "key_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The key file (SKEWLESS_API_KEYS_FILE): its digest is added; the service picks it up within a second.")
@click.option("--note", default=None, help="A comment stored beside the digest (who the key is for).")
def api_key(key_file: Path, note: str | None) -> None:
    """Make a new API key: its SHA-256 digest goes into the file, the key is printed once.

    Rotate: add a new key, move callers to it, then delete the old key's line from the file.
    """
    from datetime import datetime, timezone

    from online.auth import KeyFileError, add_to_file, new_key, read_key_file

    if key_file.exists():
        try:
            read_key_file(key_file)
        except KeyFileError as exc:
            raise click.ClickException(str(exc)) from None
    key = new_key()
    add_to_file(key_file, key, note or f"added {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}")
    click.echo(key)
    click.echo(f"its digest is in {key_file}; the key itself is stored nowhere: keep it now", err=True)
