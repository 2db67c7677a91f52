"""`skewless materialize`: fill Redis from the offline store up to a time, and say what it did.

The work is Feast's `materialize`, run by the engine `feature_repo/feature_store.yaml` names
(feast_plugins/materialize_engine.py: streamed DuckDB reads, column-wise encoding, newer-wins Lua
writes; its docstring has the profile of the stock path it replaces). The stock `feast
materialize-incremental` runs the same engine; this command adds what a scheduler wants: the
Redis the user named (or a throwaway one when none is named, `redis_for_feast`), the store
opened from any directory, and each view's watermark before and after with a summary of rows,
keys and rows/s.

Where each view starts: from *this* Redis's watermark (feast_plugins/watermark.py), not from the
registry's record of earlier runs, which every Redis the repo was ever pointed at shares. A
new, flushed or replaced Redis, or one loaded from another registry or before the view
changed, holds no watermark that counts: the view's whole TTL window is loaded. `--full` does
that for every view whatever the watermark says.

Late-arriving rows: Feast windows on event time, so a row whose `created` is after the previous
run's end but whose event time is before it falls between two windows. The engine also loads
rows *created* inside each window, which catches them however late they are. The look-back
(default 7 days) covers the remaining case, a row whose `created` was stamped before it landed
in the source (an ETL that stamps rows when it starts and publishes when it ends): each run
re-reads that much before the previous end. Re-writing is harmless: the engine never replaces a
newer value in Redis with an older one.
"""

from __future__ import annotations

import contextlib
import io
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click

from skewless.paths import REPO_DIR

DEFAULT_LOOKBACK = timedelta(days=7)


def materialize(store, end: datetime, lookback: timedelta = DEFAULT_LOOKBACK, full: bool = False) -> dict:
    """Materialize every online view up to `end`, each from `lookback` before this Redis's watermark.

    A view without a watermark that counts, or every view with `full`, loads its whole TTL
    window. Returns a summary: `views` (name -> (start, end)), `before` and `after` (name ->
    Watermark or None), `reasons` (name -> why no watermark counted, for views that loaded in
    full), `seconds`, and from the engine, `runs` (ViewRun per view), `rows`, `written`, `kept`.
    """
    from feast_plugins import watermark
    from feast_plugins.materialize_engine import WatermarkKeeper
    from feast_plugins.redis_layout import view_name
    from feast_plugins.redis_server import store_client

    started = time.perf_counter()
    engine = _engine(store)
    first_run = len(engine.runs) if engine is not None else 0
    client = store_client(store)
    registry = watermark.registry_id(store.registry, store.project)
    marks = watermark.read_all(client, store.project)
    views = [v for v in store.list_feature_views() if v.online]
    windows, before, reasons = {}, {}, {}
    for view in views:
        name = view_name(view, store.config)
        mark = watermark.held(marks, name, view, registry)
        before[view.name] = mark
        if mark is None or full:
            reasons[view.name] = "--full" if full else watermark.why_not_held(marks, name, view, registry)
            start = watermark.full_window_start(view, end)
        else:
            start = min(mark.end, end) - lookback
        # another engine than ours (`batch_engine: local`) writes no watermark: keep it here, the same way
        keeper = None if engine is not None else WatermarkKeeper(client, store.project, registry, view, name)
        if keeper is not None:
            start = keeper.start(start, end)
        if keeper is None or not _no_files_yet(store, view):  # Feast's engine fails on a directory with nothing in it
            with contextlib.redirect_stdout(io.StringIO()):  # Feast's banner and per-view lines: ours are printed instead
                store.materialize(start_date=start, end_date=end, feature_views=[view.name])
        if keeper is not None:
            keeper.advance()
        windows[view.name] = (start, end)
    marks = watermark.read_all(client, store.project)
    after = {v.name: watermark.held(marks, view_name(v, store.config), v, registry) for v in views}
    runs = engine.runs[first_run:] if engine is not None else []
    return {
        "views": windows,
        "before": before,
        "after": after,
        "reasons": reasons,
        "seconds": time.perf_counter() - started,
        "runs": runs,
        "rows": sum(r.rows for r in runs),
        "written": sum(r.written for r in runs),
        "kept": sum(r.kept for r in runs),
    }


def _no_files_yet(store, view) -> bool:
    """A view over a directory of Parquet files that holds none yet (the event path's, before its first batch)."""
    from feast.infra.offline_stores.file_source import FileSource

    source = view.batch_source
    if not isinstance(source, FileSource):
        return False
    path = Path(FileSource.get_uri_for_file_path(store.repo_path, source.path))
    return not path.suffix and not any(path.glob("**/*.parquet"))


def _engine(store):
    """The skewless engine Feast built for this store, or None when the yaml names another one.

    Feast builds the engine inside its provider; the provider is the only way to reach it, and
    the engine is where the row counts are. Its own per-view line (for the stock CLI) is
    silenced: the command prints the same numbers once, next to the watermarks.
    """
    from feast_plugins.materialize_engine import SkewlessRedisEngine

    engine = store._get_provider().batch_engine
    if not isinstance(engine, SkewlessRedisEngine):
        return None
    engine.verbose = False
    return engine


@click.command("materialize")
@click.option("--end", default="now", show_default=True, help="Materialize up to this time (ISO 8601 or `now`).")
@click.option("--lookback", type=float, default=DEFAULT_LOOKBACK.days, show_default=True, help="Days re-read before the watermark, for rows stamped before they landed.")
@click.option("--full", is_flag=True, help="Reload each view's whole TTL window, whatever the watermarks say.")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
def materialize_command(end: str, lookback: float, full: bool, repo: Path) -> None:
    """Load the latest feature values into the Redis online store, from where it is complete."""
    from skewless.times import parse_time

    when = parse_time(end)
    if when > datetime.now(timezone.utc) + timedelta(minutes=5):
        raise click.ClickException(f"--end {when.isoformat()} is in the future: materialize up to now or an earlier time")
    if lookback < 0:
        raise click.ClickException(f"--lookback must be 0 or more days, got {lookback:g}")

    from feast_plugins.redis_server import redis_for_feast
    from feast_plugins.watermark import describe
    from skewless.store import open_store

    with redis_for_feast() as endpoint:
        store = open_store(repo)  # inside: the store's connection string is the endpoint's
        if not any(v.online for v in store.list_feature_views()):
            raise click.ClickException(f"no online feature views in the registry of {repo}: nothing to materialize; run `skewless apply` first")
        summary = materialize(store, when, timedelta(days=lookback), full)
        keys = endpoint.client().dbsize()
    now = datetime.now(timezone.utc)
    runs = {r.view: r for r in summary["runs"]}
    for name, (start, stop) in summary["views"].items():
        how = f"whole TTL window ({summary['reasons'][name]})" if name in summary["reasons"] else "from the watermark less the look-back"
        click.echo(f"  {name}: watermark before: {describe(summary['before'][name], now)}")
        line = f"    loaded {start:%Y-%m-%d %H:%M} .. {stop:%Y-%m-%d %H:%M} UTC, {how}"
        if name in runs:
            r = runs[name]
            line += f": {r.rows:,} rows, {r.written:,} keys written, {r.kept:,} kept as newer, {r.seconds:.1f}s"
        click.echo(line)
        click.echo(f"    watermark after:  {describe(summary['after'][name], now)}")
    rate = f", {summary['rows'] / summary['seconds']:,.0f} rows/s" if summary["runs"] and summary["seconds"] else ""
    click.echo(f"materialized {len(summary['views'])} views into redis {endpoint.where} db {endpoint.db} ({keys:,} keys): "
               f"{summary['rows']:,} rows, {summary['written']:,} keys written in {summary['seconds']:.1f}s{rate}")
