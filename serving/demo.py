"""`skewless demo-online`: materialize, start the service, ask it for a few predictions, stop.

What `make demo` runs for the online path, so a new user sees real requests and answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import httpx

from training.store import REPO_DIR


@click.command("demo-online")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
@click.option("--customers", "count", type=int, default=3, show_default=True, help="How many customers to ask about.")
def demo_online(repo: Path, count: int) -> None:
    """Materialize to now, serve, POST /predict for a few customers, then stop the service."""
    from batch.retrieval import active_customers
    from online_store.materialize import materialize
    from online_store.redis_server import free_port, redis_for_feast
    from training.store import open_store

    with redis_for_feast() as endpoint:
        store = open_store(repo)
        now = datetime.now(timezone.utc)
        summary = materialize(store, now)  # a new, empty Redis holds no watermark: each view loads whole
        click.echo(f"materialized {len(summary['views'])} views into redis {endpoint.host}:{endpoint.port} in {summary['seconds']:.1f}s")
        ids = active_customers(store, now).sample(count, random_state=1).tolist()
        port = free_port()
        env = dict(os.environ, SKEWLESS_REPO_PATH=str(repo))
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--port", str(port), "--log-level", "warning"],
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise click.ClickException("the service did not become ready: see its output above")
                time.sleep(0.2)
            for cid in ids:
                body = {"customer_id": cid}
                click.echo(f"$ curl -s -X POST {base}/predict -d '{json.dumps(body)}'")
                click.echo(httpx.post(f"{base}/predict", json=body).text)
            body = {"customer_ids": [*ids[:2], 10**12]}
            click.echo(f"$ curl -s -X POST {base}/predict/batch -d '{json.dumps(body)}'")
            click.echo(httpx.post(f"{base}/predict/batch", json=body).text)
            click.echo(f"$ curl -s {base}/ready")
            click.echo(httpx.get(f"{base}/ready").text)
            # some traffic for the skew report: 1,000 active customers, 100 per request
            crowd = active_customers(store, now).sample(min(1000, count * 1000), random_state=0).tolist()
            for i in range(0, len(crowd), 100):
                httpx.post(f"{base}/predict/batch", json={"customer_ids": crowd[i:i + 100]}, timeout=30).raise_for_status()
            click.echo(f"served {len(crowd):,} more predictions through /predict/batch for the skew report")
        finally:
            server.terminate()  # a clean shutdown flushes the feature log
            server.wait(timeout=30)
