"""`skewless materialize`: fill Redis from the offline store up to a time, and say what it did.

The work is Feast's `materialize`, run by the engine `feature_repo/feature_store.yaml` names
(online_store/materialize_engine.py: streamed DuckDB reads, column-wise encoding, newer-wins Lua
writes; its docstring has the profile of the stock path it replaces). The stock `feast
materialize-incremental` runs the same engine; this command adds what a scheduler wants: a
Redis found or started (`redis_for_feast`), the store opened from any directory, `--full` for
an empty or replaced Redis, and a summary of rows, keys and rows/s.

Late-arriving rows: Feast windows on event time, so a row whose `created` is after the previous
run's end but whose event time is before it falls between two windows. The engine also loads
rows *created* inside each window, which catches them however late they are. The look-back
(default 7 days) covers the remaining case, a row whose `created` was stamped before it landed
in the source (an ETL that stamps rows when it starts and publishes when it ends): each run
re-reads that much before the previous end. Re-writing is harmless: the engine never replaces a
newer value in Redis with an older one.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from training.store import REPO_DIR

DEFAULT_LOOKBACK = timedelta(days=7)


def materialize(store, end: datetime, lookback: timedelta = DEFAULT_LOOKBACK, full: bool = False) -> dict:
    """Materialize every online view up to `end`, starting `lookback` before its last end.

    A view never materialized, or every view with `full` (an empty or new Redis, which the
    registry cannot know about), starts at `end - ttl` (what Feast's first incremental run does).
    Returns a summary: `views` (name -> window), `seconds`, and from the engine, `runs`
    (online_store.materialize_engine.ViewRun per view), `rows`, `written` and `kept`.
    """
    started = time.perf_counter()
    engine = _engine(store)
    before = len(engine.runs) if engine is not None else 0
    windows = {}
    for view in store.list_feature_views():
        if not view.online:
            continue
        last = view.most_recent_end_time
        if last is None or full:
            start = end - (view.ttl if view.ttl and view.ttl.total_seconds() > 0 else timedelta(days=3650))
        else:
            start = min(last, end) - lookback
        store.materialize(start_date=start, end_date=end, feature_views=[view.name])
        windows[view.name] = (start, end)
    runs = engine.runs[before:] if engine is not None else []
    return {
        "views": windows,
        "seconds": time.perf_counter() - started,
        "runs": runs,
        "rows": sum(r.rows for r in runs),
        "written": sum(r.written for r in runs),
        "kept": sum(r.kept for r in runs),
    }


def _engine(store):
    """The skewless engine Feast built for this store, or None when the yaml names another one.

    Feast builds the engine inside its provider; the provider is the only way to reach it, and
    the engine is where the row counts are.
    """
    from online_store.materialize_engine import SkewlessRedisEngine

    engine = store._get_provider().batch_engine
    return engine if isinstance(engine, SkewlessRedisEngine) else None


@click.command("materialize")
@click.option("--end", default="now", show_default=True, help="Materialize up to this time (ISO 8601 or `now`).")
@click.option("--lookback", type=float, default=DEFAULT_LOOKBACK.days, show_default=True, help="Days re-read before the previous end, for rows stamped before they landed.")
@click.option("--full", is_flag=True, help="Reload each view's whole TTL window (for an empty or replaced Redis).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
def materialize_command(end: str, lookback: float, full: bool, repo: Path) -> None:
    """Load the latest feature values into the Redis online store (incremental)."""
    from online_store.redis_server import redis_for_feast
    from training.cli import parse_time
    from training.store import open_store

    when = parse_time(end)  # a ClickException (one line, exit 1) when --end is not a time
    if when > datetime.now(timezone.utc) + timedelta(minutes=5):
        raise click.ClickException(f"--end {when.isoformat()} is in the future: materialize up to now or an earlier time")
    if lookback < 0:
        raise click.ClickException(f"--lookback must be 0 or more days, got {lookback:g}")
    with redis_for_feast() as endpoint:
        summary = materialize(open_store(repo), when, timedelta(days=lookback), full)
        keys = endpoint.client().dbsize()
    runs = {r.view: r for r in summary["runs"]}
    for name, (start, stop) in summary["views"].items():
        line = f"  {name}: {start:%Y-%m-%d %H:%M} .. {stop:%Y-%m-%d %H:%M} UTC"
        if name in runs:
            r = runs[name]
            line += f": {r.rows:,} rows, {r.written:,} keys written, {r.kept:,} kept as newer, {r.seconds:.1f}s"
        click.echo(line)
    rate = f", {summary['rows'] / summary['seconds']:,.0f} rows/s" if summary["runs"] and summary["seconds"] else ""
    click.echo(f"materialized {len(summary['views'])} views into redis {endpoint.host}:{endpoint.port} ({keys:,} keys): "
               f"{summary['rows']:,} rows, {summary['written']:,} keys written in {summary['seconds']:.1f}s{rate}")
