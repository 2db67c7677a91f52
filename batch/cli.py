"""`skewless score`: batch scoring as of a time, and `skewless score status` for freshness.

Also runnable from a scheduler as `python -m batch ...`.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from training.cli import parse_time
from training.store import REPO_DIR


def read_ids(path: Path) -> tuple["pd.Series", int]:  # noqa: F821
    """Customer IDs from a file, one per line (blank lines and # comments allowed).

    Junk lines make the whole file invalid (ClickException with the count and the first one),
    so a half-right list never scores half the customers; duplicates are scored once.
    """
    import pandas as pd

    ids, junk, first_junk = [], 0, None
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if re.fullmatch(r"\d{1,19}", line) and int(line) < 2**63:
            ids.append(int(line))
        else:
            junk += 1
            first_junk = first_junk or (n, raw.strip()[:40])
    if junk:
        raise click.ClickException(f"{path}: {junk} line(s) are not customer IDs (first: line {first_junk[0]}: {first_junk[1]!r}); nothing was scored")
    if not ids:
        raise click.ClickException(f"{path}: no customer IDs in the file")
    series = pd.Series(ids, dtype="int64")
    unique = series.drop_duplicates()
    return unique, len(series) - len(unique)


def parse_age(value: str) -> timedelta:
    m = re.fullmatch(r"(\d+)([smhd])", value.strip())
    if not m:
        raise click.ClickException(f"--max-age {value!r} is not a duration (e.g. 26h, 90m, 2d)")
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]: int(m.group(1))})


@click.group(invoke_without_command=True)
@click.option("--as-of", "as_of", default=None, help="Score as of this time (ISO 8601 or `now`). Required unless a subcommand is given.")
@click.option("--customers", "ids_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File of customer IDs, one per line.")
@click.option("--all-active", is_flag=True, help="All customers active at the as-of time (the default).")
@click.option("--model", "version", default="latest", show_default=True, help="Model version to score with.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where bundles are (default: models/, or SKEWLESS_MODEL_DIR).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="DuckDB file (default: data/predictions.duckdb).")
@click.option("--parquet-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Parquet root (default: data/predictions/).")
@click.option("--engine", type=click.Choice(["duckdb", "feast"]), default="duckdb", show_default=True, help="duckdb: streamed as-of retrieval; feast: Feast's get_historical_features per chunk.")
@click.option("--chunk-rows", type=int, default=250_000, show_default=True)
@click.pass_context
def score(ctx, as_of, ids_file, all_active, version, model_dir, repo, db_path, parquet_dir, engine, chunk_rows) -> None:
    """Score customers as of a time into DuckDB (churn_predictions) and Parquet."""
    if ctx.invoked_subcommand is not None:
        return
    if as_of is None:
        raise click.ClickException("--as-of is required (ISO 8601 time or `now`)")
    if ids_file is not None and all_active:
        raise click.ClickException("give either --customers FILE or --all-active, not both")
    if chunk_rows <= 0:
        raise click.ClickException("--chunk-rows must be positive")
    from tqdm import tqdm

    from batch.job import DEFAULT_DB, DEFAULT_PARQUET, run_batch
    from training.bundle import DEFAULT_MODEL_DIR, BundleError, load_bundle
    from training.store import open_store

    when = parse_time(as_of)
    ids, duplicates = (None, 0)
    if ids_file is not None:
        if not ids_file.is_file():
            raise click.ClickException(f"--customers {ids_file}: no such file")
        ids, duplicates = read_ids(ids_file)
    store = open_store(repo)
    try:
        bundle = load_bundle(version, model_dir or DEFAULT_MODEL_DIR, store=store)
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None
    with tqdm(unit="customer", unit_scale=True, desc="score", file=sys.stderr, disable=None) as bar:
        summary = run_batch(
            store, bundle, when, ids, db_path or DEFAULT_DB, parquet_dir or DEFAULT_PARQUET, chunk_rows, engine,
            progress=bar.update, on_total=lambda n: setattr(bar, "total", n),
        )
    secs = summary.total_seconds
    click.echo(f"scored {summary.customers:,} customers as of {when.isoformat()} with {bundle.name}/{bundle.version} (run {summary.run_id})")
    if duplicates:
        click.echo(f"  {duplicates} duplicate ID(s) in {ids_file} scored once")
    click.echo("  by risk segment: " + ", ".join(f"{s['name']} {summary.by_segment.get(s['name'], 0):,}" for s in bundle.segments))
    click.echo(f"  customers with missing features: {summary.with_missing_features:,}")
    click.echo("  time: " + ", ".join(f"{k} {v:.2f}s" for k, v in summary.seconds.items()) + f"; total {secs:.2f}s ({summary.customers / max(secs, 1e-9):,.0f} rows/s)")
    if summary.top is not None and len(summary.top):
        click.echo("  top high-risk customers:")
        click.echo(f"    {'customer_id':>12}  {'probability':>11}  segment")
        for r in summary.top.itertuples():
            click.echo(f"    {r.customer_id:>12}  {r.churn_probability:>11.3f}  {r.risk_segment}")


@score.command()
@click.option("--max-age", default="26h", show_default=True, help="Fail when the newest run was scored longer ago than this.")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="DuckDB file (default: data/predictions.duckdb).")
def status(max_age: str, db_path: Path | None) -> None:
    """Newest run per model; exits 1 when it is older than --max-age or there is none."""
    from batch.job import DEFAULT_DB
    from batch.outputs import latest_runs

    limit = parse_age(max_age)
    runs = latest_runs(db_path or DEFAULT_DB)
    if runs.empty:
        raise click.ClickException(f"no batch runs in {db_path or DEFAULT_DB}: predictions are absent")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    stale = []
    for r in runs.itertuples():
        age = now - r.scored_at.to_pydatetime()
        click.echo(f"{r.model_name}/{r.model_version}: as_of {r.as_of:%Y-%m-%d %H:%M:%S}, scored {r.scored_at:%Y-%m-%d %H:%M:%S} UTC ({age.total_seconds() / 3600:.1f}h ago), {r.rows:,} rows")
        if age > limit:
            stale.append(r.model_name)
    if stale:
        raise click.ClickException(f"stale predictions for {', '.join(stale)}: newest run is older than {max_age}")
