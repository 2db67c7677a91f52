"""`skewless generate`: the synthetic raw sources the demo, the tests and the benchmarks run on."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from skewless.paths import REPO_DIR


@click.command()
@click.option("--customers", type=int, default=50_000, show_default=True, help="Number of customers (1k tests, 50k demo, 1M/10M benchmarks).")
@click.option("--days", type=int, default=150, show_default=True, help="Days of history to write.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed; same seed and --end, same bytes.")
@click.option("--end", default="today", show_default=True, help="When the data ends: `today` (00:00 UTC, reproducible), `now` (what a demo serves at once) or an ISO time.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=REPO_DIR / "data", show_default=True, help="Directory the Parquet sources go to.")
@click.option("--events/--no-events", default=True, show_default=True, help="Also the raw account-event log and the account state folded from it (~70 events a customer).")
@click.option("--shift-after", default=None, help="From this time (ISO 8601) churn follows another mechanism: a model trained before decays (`skewless quality` shows it).")
def generate(customers: int, days: int, seed: int, end: str, out_dir: Path, events: bool, shift_after: str | None) -> None:
    """Write the synthetic raw sources (profiles, activity, labels) as Parquet."""
    from skewless.times import data_end, parse_time

    if customers <= 0:
        raise click.ClickException(f"--customers must be a positive number, got {customers}")
    ends = data_end(end)  # a bad --end is one line before anything heavy is imported
    shift = parse_time(shift_after) if shift_after else None

    from tqdm import tqdm

    from synthetic.generate import GenerateConfig, generate as run

    started = time.perf_counter()
    with tqdm(total=customers, unit="customer", unit_scale=True, desc="generate", file=sys.stderr, disable=None) as bar:
        cfg = GenerateConfig(customers=customers, days=days, seed=seed, end=ends, events=events, shift_after=shift)
        summary = run(cfg, out_dir, progress=bar.update)
    seconds = time.perf_counter() - started
    click.echo(f"wrote {out_dir} in {seconds:.1f}s ({customers / seconds:,.0f} customers/s), data {cfg.start:%Y-%m-%d %H:%M} .. {cfg.end:%Y-%m-%d %H:%M} UTC")
    click.echo(f"  profiles {summary.profile_rows:,} rows, activity {summary.activity_rows:,} rows, labels {summary.label_rows:,} rows"
               + (f", events {summary.event_rows:,}, account states {summary.state_rows:,}" if events else ""))
    for name, size in summary.files.items():
        click.echo(f"  {name}{'/' if '.' not in name else ''}: {size / 1e6:.1f} MB")
    click.echo(f"  30-day churn rate {summary.churn_rate:.1%}; AUC of the true hazard (the ceiling) {summary.ceiling_auc:.3f}")
