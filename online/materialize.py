"""`skewless materialize`: fill Redis from the offline store, catching late-arriving rows.

The stock `feast materialize-incremental` windows on event time: each run loads rows whose
event time is after the previous run's end. A row that arrives late (its `created` after that
end, its event time before it) falls between two windows and never reaches Redis, although
historical retrieval returns it once it has arrived. Here every run re-reads a look-back
overlap before the previous end (default 7 days, longer than any lateness in the sources).
Re-writing is harmless: Feast's Redis store compares the stored `_ts` and never replaces a
newer value with an older one, so an overlapping window only adds what was missed.
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
    Returns a summary: views, window per view, seconds.
    """
    started = time.perf_counter()
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
    return {"views": windows, "seconds": time.perf_counter() - started}


@click.command("materialize")
@click.option("--end", default="now", show_default=True, help="Materialize up to this time (ISO 8601 or `now`).")
@click.option("--lookback", type=float, default=DEFAULT_LOOKBACK.days, show_default=True, help="Days re-read before the previous end, to catch late rows.")
@click.option("--full", is_flag=True, help="Reload each view's whole TTL window (for an empty or replaced Redis).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
def materialize_command(end: str, lookback: float, full: bool, repo: Path) -> None:
    """Load the latest feature values into the Redis online store."""
    from online.redis_server import redis_for_feast
    from training.cli import parse_time
    from training.store import open_store

    when = parse_time(end)
    if when > datetime.now(timezone.utc) + timedelta(minutes=5):
        raise click.ClickException(f"--end {when.isoformat()} is in the future")
    if lookback < 0:
        raise click.ClickException("--lookback must be 0 or more days")
    with redis_for_feast() as endpoint:
        summary = materialize(open_store(repo), when, timedelta(days=lookback), full)
        keys = endpoint.client().dbsize()
    for name, (start, stop) in summary["views"].items():
        click.echo(f"  {name}: {start:%Y-%m-%d %H:%M} .. {stop:%Y-%m-%d %H:%M} UTC")
    click.echo(f"materialized {len(summary['views'])} views into redis {endpoint.host}:{endpoint.port} ({keys:,} keys) in {summary['seconds']:.1f}s")
