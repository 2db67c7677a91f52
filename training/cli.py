"""The `skewless` command: one entry point for every stage of the pipeline.

Stages register their own subcommands (training here, batch/cli.py, online/cli.py). Heavy
imports (Feast, XGBoost) happen inside the commands so `skewless --help` stays fast. Every
expected failure becomes one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click

from training.store import REDIS_ENV, REPO_DIR


class Group(click.Group):
    """Turns the errors users cause into one-line messages (`Error: ...`, exit 1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"cannot use{where}: {exc.strerror or exc}") from exc
        except (ValueError, RuntimeError, LookupError) as exc:
            lines = str(exc).strip().splitlines()
            raise click.ClickException(lines[0] if lines else type(exc).__name__) from exc


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """skewless: one Feast feature contract for training, batch scoring and online serving."""


@main.command()
@click.option("--customers", type=int, default=50_000, show_default=True, help="Number of customers (1k tests, 50k demo, 1M/10M benchmarks).")
@click.option("--days", type=int, default=150, show_default=True, help="Days of history to write.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed; same seed, same bytes.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=REPO_DIR / "data", show_default=True, help="Directory the Parquet sources go to.")
def generate(customers: int, days: int, seed: int, out_dir: Path) -> None:
    """Write the synthetic raw sources (profiles, activity, labels) as Parquet."""
    from tqdm import tqdm

    from training.generate import GenerateConfig, generate as run

    if customers <= 0:
        raise click.ClickException(f"--customers must be a positive number, got {customers}")
    started = time.perf_counter()
    with tqdm(total=customers, unit="customer", unit_scale=True, desc="generate", file=sys.stderr, disable=None) as bar:
        summary = run(GenerateConfig(customers=customers, days=days, seed=seed), out_dir, progress=bar.update)
    seconds = time.perf_counter() - started
    click.echo(f"wrote {out_dir} in {seconds:.1f}s ({customers / seconds:,.0f} customers/s)")
    click.echo(f"  profiles {summary.profile_rows:,} rows, activity {summary.activity_rows:,} rows, labels {summary.label_rows:,} rows")
    for name, size in summary.files.items():
        click.echo(f"  {name}: {size / 1e6:.1f} MB")
    click.echo(f"  30-day churn rate {summary.churn_rate:.1%}; AUC of the true hazard (the ceiling) {summary.ceiling_auc:.3f}")


@main.command()
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
def apply(repo: Path) -> None:
    """Register the feature definitions: runs the stock `feast apply` inside the repo."""
    from online.redis_server import redis_for_feast

    if not (repo / "data").is_dir():
        raise click.ClickException(f"no data in {repo / 'data'}: run `skewless generate` first")
    with redis_for_feast():
        feast_cli = Path(sys.executable).with_name("feast")
        result = subprocess.run([str(feast_cli), "apply"], cwd=repo, env=dict(os.environ), capture_output=True, text=True)
    if result.returncode != 0:
        lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
        raise click.ClickException(f"feast apply failed: {lines[-1] if lines else 'no output'}")
    for line in result.stdout.splitlines():
        if line.startswith(("Applying", "Deploying", "Created", "Deleting", "Updated")):
            click.echo(line)
    click.echo(f"applied {repo} (registry {repo / 'data' / 'registry.db'})")
