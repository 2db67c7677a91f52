"""The Dagster code location: `dagster dev` in the project root loads it ([tool.dagster] in pyproject.toml).

Jobs and schedules (UTC):
- `batch_scoring`: batch_scores then published_scores for one day's partition, daily at 02:00
  for that day (a backfill over a range of partitions re-scores each as-of date; re-running a
  partition replaces its run, rows unchanged);
- `materialization`: the sources observed, then online_features, hourly;
- `retraining`: training_set, candidate_bundle, then serving_bundle through the promotion gate,
  weekly on Monday at 03:00.
"""

from __future__ import annotations

import dagster as dg

from orchestration.alerts import alert_on_failure
from orchestration.assets import assets, raw_sources
from orchestration.checks import checks
from orchestration.resources import from_environment

batch_job = dg.define_asset_job("batch_scoring", selection=["batch_scores", "published_scores"],
                                description="Score every active customer as of the partition's day, then publish the scores to Redis.")
materialize_job = dg.define_asset_job("materialization", selection=dg.AssetSelection.assets(*[s.key for s in raw_sources], "online_features"),
                                      description="Observe the sources (rows, newest event time), then load Redis from the offline store, "
                                                  "from its own watermark.")
retrain_job = dg.define_asset_job("retraining", selection=["training_set", "candidate_bundle", "serving_bundle"],
                                  description="Train a candidate on the newest labels; promote it only through the gate.")

daily_batch = dg.build_schedule_from_partitioned_job(batch_job, hour_of_day=2, minute_of_hour=0, name="daily_batch_scores",
                                                     default_status=dg.DefaultScheduleStatus.RUNNING)
hourly_materialization = dg.ScheduleDefinition(name="hourly_materialization", job=materialize_job, cron_schedule="0 * * * *",
                                               execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)
weekly_retraining = dg.ScheduleDefinition(name="weekly_retraining", job=retrain_job, cron_schedule="0 3 * * 1",
                                          execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)

defs = dg.Definitions(
    assets=assets,
    asset_checks=checks,
    jobs=[batch_job, materialize_job, retrain_job],
    schedules=[daily_batch, hourly_materialization, weekly_retraining],
    sensors=[alert_on_failure],
    resources={"skewless": from_environment()},
)
