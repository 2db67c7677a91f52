"""`skewless serve`: the online service on uvicorn, with a Redis found or started."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Processes; each loads the model once.")
def serve(host: str, port: int, workers: int) -> None:
    """Serve POST /predict, /predict/batch, /health, /ready, /metrics and /docs."""
    import uvicorn

    from online.redis_server import redis_for_feast

    with redis_for_feast() as endpoint:
        click.echo(f"online store: redis {endpoint.host}:{endpoint.port} db {endpoint.db}", err=True)
        uvicorn.run("online.app:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level="warning", access_log=False, loop="uvloop", http="httptools")
