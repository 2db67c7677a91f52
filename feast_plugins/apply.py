"""`skewless apply`: register the feature definitions with the stock `feast apply`, run inside the repo.

The scheduled pipeline's registry asset calls `apply_registry` too: one way to apply, whoever asks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from skewless.paths import REPO_DIR

SHOWN = ("Applying", "Deploying", "Created", "Deleting", "Updated")  # what `feast apply` says that a user wants to see


class ApplyError(RuntimeError):
    """`feast apply` failed; the message is its last line."""


def apply_registry(repo: Path) -> list[str]:
    """Run the stock `feast apply` in `repo` (the Redis named, or none: it touches Redis only to
    drop removed views); the lines of its output worth showing."""
    from feast_plugins.redis_server import redis_for_feast

    if not (repo / "data").is_dir():
        raise ApplyError(f"no data in {repo / 'data'}: run `skewless generate` first")
    with redis_for_feast(must_answer=False):
        feast_cli = Path(sys.executable).with_name("feast")
        result = subprocess.run([str(feast_cli), "apply"], cwd=repo, env=dict(os.environ), capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise ApplyError(f"feast apply failed: {lines[-1] if lines else 'no output'}")
    return [line for line in result.stdout.splitlines() if line.startswith(SHOWN)]


@click.command("apply")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
def apply_command(repo: Path) -> None:
    """Register the feature definitions: runs the stock `feast apply` inside the repo."""
    try:
        lines = apply_registry(repo)
    except ApplyError as exc:
        raise click.ClickException(str(exc)) from None
    for line in lines:
        click.echo(line)
    click.echo(f"applied {repo} (registry {repo / 'data' / 'registry.db'})")
