"""Publish a committed batch run's scores to the online store, so apps read them by customer ID.

The run's Parquet file is already in the `churn_scores` view's source (feature_repo/: the view
reads the predictions directory the job writes), so publishing is Feast's materialization of
that view, by the project's engine: newer wins by as-of (an older as-of never replaces a newer
score), a re-run of the same as-of replaces it (same as-of, later `scored_at`), and the engine
records which full run Redis now serves (feast_plugins/served_runs.py). It runs only after the
DuckDB and Parquet swap has committed, so a failed or interrupted run changes nothing online;
if Redis fails after the commit, the run is visible offline only and `skewless score status`
says so until the next load (`skewless materialize`, safe to repeat).
"""

from __future__ import annotations

import contextlib
import io
from datetime import datetime
from pathlib import Path

from feast_plugins.served_runs import ServedRun, read_runs, scores_view


def scores_dir(store) -> Path | None:
    """The directory the scores view reads: where a batch run must write to be served by ID."""
    from feast.infra.offline_stores.file_source import FileSource

    view = scores_view(store)
    if view is None:
        return None
    return Path(FileSource.get_uri_for_file_path(store.repo_path, view.batch_source.path))


def publish(store, as_of: datetime, model_name: str) -> ServedRun | None:
    """Load the scores view up to `as_of` into the store's Redis; the full run it now serves for the model."""
    from feast_plugins.redis_server import store_client

    view = scores_view(store)
    with contextlib.redirect_stdout(io.StringIO()):  # Feast's banner: the caller prints what happened
        store.materialize(start_date=as_of, end_date=as_of, feature_views=[view.name])
    return read_runs(store_client(store), store.project).get(model_name)
