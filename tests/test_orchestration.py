"""The scheduled pipeline on Dagster, run by Dagster's own harness against a real Redis and Feast.

A private copy of the live repo (data ending today, a bundle), a private redis-server that can
be stopped and started again on the same port with its data (append-only file), and the code
location's own assets, checks, schedules and sensor, materialized in process. What the assets
write is compared with what the commands write; each check is made to fail the way it should.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import duckdb
import pandas as pd
import pytest
import redis
from conftest import copy_repo, feast_apply

from feast_plugins.redis_layout import int_key_layout
from feast_plugins.redis_server import RedisEndpoint, free_port
from orchestration import definitions
from orchestration.alerts import alert_on_failure
from orchestration.assets import batch_scores, online_features, published_scores, serving_bundle
from orchestration.checks import model_quality, online_batch_parity, scores_fresh, served_features, watermark_lag
from orchestration.gate import PromotionRefused, promote
from orchestration.resources import SkewlessResource
from skewless.paths import PROJECT_DIR

TODAY = datetime.now(timezone.utc).strftime("%Y-%m-%d")


class Redis:
    """A redis-server on a fixed loopback port that keeps its data across a stop and a start."""

    def __init__(self, workdir: Path):
        self.port, self.dir = free_port(), workdir
        self.proc = None
        self.endpoint = RedisEndpoint("127.0.0.1", self.port)

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                                      "--appendonly", "yes", "--save", ""], stdout=subprocess.DEVNULL)
        for _ in range(200):
            if self.endpoint.ping():
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="module")
def env(live, tmp_path_factory, redis_endpoint):
    root = tmp_path_factory.mktemp("pipeline")
    repo = copy_repo(root / "feature_repo")
    shutil.rmtree(repo / "data")
    shutil.copytree(live.repo / "data", repo / "data", ignore=shutil.ignore_patterns("registry.db", ".*staging*"))
    assert feast_apply(repo, redis_endpoint).returncode == 0
    models = root / "models"
    shutil.copytree(live.model_dir, models, symlinks=True)
    server = Redis(root)
    server.start()
    resource = SkewlessResource(repo_path=str(repo), model_dir=str(models), predictions_db=str(root / "predictions.duckdb"),
                                redis_url=server.endpoint.url, feature_log_dir=str(root / "feature_log"), parity_sample=60)
    try:
        yield SimpleNamespace(root=root, repo=repo, models=models, redis=server, resource=resource, bundle=live.bundle)
    finally:
        server.stop()


def run(env, assets, partition=None, resource=None, **kw) -> dg.ExecuteInProcessResult:
    """Materialize `assets` in process with the pipeline's resource (the checks on them run too)."""
    all_checks = [scores_fresh, online_batch_parity, watermark_lag, served_features, model_quality]
    return dg.materialize([*assets, *all_checks], resources={"skewless": resource or env.resource}, partition_key=partition,
                          selection=dg.AssetSelection.assets(*assets) | dg.AssetSelection.checks_for_assets(*assets), **kw)


def check_results(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def rows(db: Path, as_of: str) -> pd.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT customer_id, churn_probability, churn_prediction, risk_segment, model_version FROM churn_predictions "
                           "WHERE as_of = ? ORDER BY customer_id", [datetime.fromisoformat(as_of).replace(tzinfo=None)]).df()


def test_the_code_location_validates_and_loads_from_the_project_root(tmp_path):
    r = subprocess.run([str(Path(sys.executable).with_name("dagster")), "definitions", "validate"], cwd=PROJECT_DIR,
                       env=dict(os.environ, DAGSTER_HOME=str(tmp_path)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Validation successful for code location skewless" in r.stdout + r.stderr, r.stdout + r.stderr
    repo = definitions.defs.get_repository_def()
    assert {"batch_scoring", "materialization", "retraining"} <= {j.name for j in repo.get_all_jobs()}


def test_the_sources_are_observed_with_their_newest_event_time(env):
    from orchestration.assets import raw_sources

    job = dg.Definitions(assets=[*raw_sources, online_features], jobs=[definitions.materialize_job],
                         resources={"skewless": env.resource}).get_job_def("materialization")
    result = job.execute_in_process()  # the hourly job: the sources observed, then the online features loaded
    assert result.success
    seen = {e.event_specific_data.asset_observation.asset_key.path[-1]: e.event_specific_data.asset_observation.metadata
            for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION}
    assert set(seen) == {"customer_profiles", "customer_activity", "account_state", "churn_labels"}
    assert all(m["rows"].value > 0 and m["newest_event_time"].value.startswith("20") for m in seen.values()), seen


def test_batch_assets_write_what_skewless_score_writes(env, tmp_path):
    result = run(env, [batch_scores, published_scores], partition=TODAY)
    assert result.success
    meta = result.asset_materializations_for_node("batch_scores")[0].metadata
    assert meta["feature_service"].value == env.bundle.feature_service and meta["bundle"].value.endswith(env.bundle.version)
    as_of = f"{TODAY}T00:00:00+00:00"
    r = subprocess.run([str(Path(sys.executable).with_name("skewless")), "score", "--as-of", as_of, "--repo", str(env.repo),
                        "--model-dir", str(env.models), "--out-dir", str(tmp_path), "--top", "0"],
                       env={k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SKEWLESS_REDIS")}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ours, command = rows(env.resource.db, as_of), rows(tmp_path / "predictions.duckdb", as_of)
    assert len(ours) > 100
    pd.testing.assert_frame_equal(ours, command)
    served = json.loads(redis.Redis(port=env.redis.port).hget(b"skewless:runs:skewless", "churn"))
    assert served["as_of"].startswith(TODAY) and served["run_id"] == meta["run_id"].value  # published: /scores serves this run


def feature_keys(client) -> dict[bytes, dict]:
    return {k: client.hgetall(k) for k in client.scan_iter() if not k.startswith(b"skewless:")}


def test_online_features_write_what_skewless_materialize_writes(env, tmp_path):
    assert run(env, [online_features]).success
    other = Redis(tmp_path)
    other.start()
    try:
        r = subprocess.run([str(Path(sys.executable).with_name("skewless")), "materialize", "--repo", str(env.repo)],
                           env=dict(os.environ, REDIS_URL=other.endpoint.url), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        ours, command = feature_keys(env.redis.endpoint.client()), feature_keys(other.endpoint.client())
        assert ours.keys() == command.keys() and len(ours) > 100
        assert all(ours[k] == command[k] for k in ours)  # byte for byte
    finally:
        other.stop()


def test_the_daily_schedule_at_two_requests_that_days_partition():
    schedule = definitions.defs.get_schedule_def("daily_batch_scores")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 12, 7, 2, 0, tzinfo=timezone.utc))
    requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2026-12-07"]
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone in (None, "UTC")
    crons = {name: definitions.defs.get_schedule_def(name).cron_schedule for name in ("hourly_materialization", "weekly_retraining")}
    assert crons["hourly_materialization"] == "0 * * * *" and crons["weekly_retraining"] == "0 3 * * 1"


def test_a_backfill_writes_a_run_per_day_and_rerunning_one_changes_no_row(env):
    days = [(datetime.now(timezone.utc) - timedelta(days=d)).strftime("%Y-%m-%d") for d in (3, 2, 1)]
    for day in days:
        assert run(env, [batch_scores], partition=day).success
    with duckdb.connect(str(env.resource.db), read_only=True) as con:
        as_ofs = {str(a)[:10] for (a,) in con.execute("SELECT DISTINCT as_of FROM churn_runs").fetchall()}
    assert set(days) <= as_ofs
    before = rows(env.resource.db, f"{days[1]}T00:00:00+00:00")
    assert run(env, [batch_scores], partition=days[1]).success
    pd.testing.assert_frame_equal(rows(env.resource.db, f"{days[1]}T00:00:00+00:00"), before)


def test_the_freshness_check_fails_past_its_budget(env):
    assert run(env, [batch_scores], partition=TODAY).success
    stale = SkewlessResource(**{**env.resource.model_dump(), "score_max_age_hours": 0.0})
    result = run(env, [batch_scores], partition=TODAY, resource=stale, raise_on_error=False)
    assert not check_results(result)["scores_fresh"].passed


def test_a_value_changed_by_hand_in_redis_fails_parity_and_skew(env, tmp_path):
    from fastapi.testclient import TestClient

    from online.app import create_app
    from online.settings import Settings
    from orchestration.assets import sample_ids

    assert run(env, [online_features]).success
    client = env.redis.endpoint.client()
    ids = sample_ids(env.resource)
    victim, donor = ids[0], ids[-1]
    layout = int_key_layout(env.resource.store().config, "customer_id")
    original = client.dump(layout.key(victim))
    client.restore(layout.key(victim), 0, client.dump(layout.key(donor)), replace=True)  # the victim now holds the donor's values
    env_vars = {"SKEWLESS_REDIS": env.redis.endpoint.feast}
    old = {k: os.environ.get(k) for k in env_vars}
    os.environ.update(env_vars)
    try:
        settings = Settings(repo_path=env.repo, model_dir=env.models, feature_log_dir=Path(env.resource.feature_log_dir))
        with TestClient(create_app(settings)) as service:
            assert service.post("/predict/batch", json={"customer_ids": ids[:20]}).status_code == 200
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    checks = {**check_results(dg.materialize([online_features, online_batch_parity, served_features], resources={"skewless": env.resource},
                                             selection=dg.AssetSelection.checks_for_assets(online_features), raise_on_error=False))}
    assert not checks["online_batch_parity"].passed and str(victim) in str(checks["online_batch_parity"].metadata["result"].value)
    assert not checks["served_features_skew"].passed and checks["served_features_skew"].metadata["rows_differing"].value >= 1
    client.restore(layout.key(victim), 0, original, replace=True)  # put back: parity holds again
    assert check_results(run(env, [online_features]))["online_batch_parity"].passed


def test_a_view_whose_watermark_is_missing_fails_the_watermark_check(env):
    assert run(env, [online_features]).success
    client = env.redis.endpoint.client()
    key = b"skewless:watermark:skewless"
    field = next(f for f in client.hkeys(key) if b"customer_activity" in f)
    saved = client.hget(key, field)
    client.hdel(key, field)
    try:
        checks = check_results(dg.materialize([online_features, watermark_lag], resources={"skewless": env.resource},
                                              selection=dg.AssetSelection.checks_for_assets(online_features), raise_on_error=False))
        assert not checks["watermark_lag"].passed and "customer_activity" in checks["watermark_lag"].metadata["problems"].value
    finally:
        client.hset(key, field, saved)


def test_the_promotion_gate_refuses_a_worse_bundle_and_latest_stays(env, tmp_path, redis_endpoint):
    """4,000 customers: enough for a model with signal (ROC-AUC ~0.6), which 600 do not give."""
    from skewless.bundle import load_bundle
    from skewless.labels import LABELS_FILE
    from skewless.store import open_store
    from synthetic.generate import GenerateConfig, generate
    from training.train import train

    repo, models = copy_repo(tmp_path / "feature_repo"), tmp_path / "models"
    generate(GenerateConfig(customers=4_000, seed=5, events=False), repo / "data")
    assert feast_apply(repo, redis_endpoint).returncode == 0
    store = open_store(repo)
    serving = train(store, repo, models).bundle  # promoted: the bundle being served
    labels = pd.read_parquet(repo / "data" / LABELS_FILE)
    labels["churned"] = labels["churned"].sample(frac=1.0, random_state=3).to_numpy()  # the labels no longer mean anything
    labels.to_parquet(repo / "data" / LABELS_FILE)
    worse = train(store, repo, models, promote=False).bundle
    assert load_bundle("latest", models).version == serving.version  # trained, not served
    with pytest.raises(PromotionRefused, match="validation ROC-AUC .* below the serving bundle's"):
        promote(models, worse.version, 0.01)
    resource = SkewlessResource(repo_path=str(repo), model_dir=str(models), predictions_db=str(tmp_path / "p.duckdb"))
    result = dg.materialize([serving_bundle], resources={"skewless": resource}, raise_on_error=False)
    assert not result.success  # the asset fails with the reason: the newest candidate on disk is the worse one
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "not promoted" in str(failure.event_specific_data.error.message)
    assert load_bundle("latest", models).version == serving.version


def test_redis_stopped_mid_run_is_retried_and_still_down_fails_leaving_the_previous_state(env):
    assert run(env, [online_features]).success
    client = env.redis.endpoint.client()
    marks = client.hgetall(b"skewless:watermark:skewless")
    env.redis.stop()
    back = threading.Timer(1.5, env.redis.start)  # back before the first retry (3 s)
    back.start()
    try:
        result = run(env, [online_features])  # the first try finds no Redis; a retry finds it back
    finally:
        back.join()
    assert result.success
    retried = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert retried, " ".join(e.event_type_value for e in result.all_events)
    marks = client.hgetall(b"skewless:watermark:skewless")
    env.redis.stop()
    try:
        failed = run(env, [online_features], raise_on_error=False)
        assert not failed.success
    finally:
        env.redis.start()
    assert client.hgetall(b"skewless:watermark:skewless") == marks  # nothing half-written: the watermarks as before


def test_a_failed_run_writes_one_alert_line(env, tmp_path, monkeypatch):
    log = tmp_path / "alerts.log"
    monkeypatch.setenv("SKEWLESS_ALERT_LOG", str(log))
    with dg.instance_for_test() as instance:
        nowhere = SkewlessResource(**{**env.resource.model_dump(), "redis_url": None})
        result = dg.materialize([online_features], resources={"skewless": nowhere}, instance=instance, raise_on_error=False)
        assert not result.success
        run_record = instance.get_run_by_id(result.run_id)
        failure = next(e for e in instance.all_logs(result.run_id) if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(sensor_name="alert_on_failure", dagster_event=failure.dagster_event,
                                                     dagster_instance=instance, dagster_run=run_record).for_run_failure()
        alert_on_failure(context)
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and "skewless run failed" in lines[0] and result.run_id[:8] in lines[0], lines


def test_the_scheduler_command_serves_the_ui_and_its_graphql_lists_assets_checks_schedules(tmp_path):
    import httpx

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("skewless")), "scheduler", "--port", str(port), "--dagster-home", str(tmp_path)],
                            cwd=PROJECT_DIR, env={k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SKEWLESS_REDIS")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    query = """{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } }
                 repositoriesOrError { ... on RepositoryConnection { nodes { name schedules { name cronSchedule } sensors { name } } } } }"""
    try:
        deadline, data = time.monotonic() + 180, None
        while time.monotonic() < deadline and data is None:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=10)
                if r.status_code == 200 and r.json().get("data", {}).get("assetNodes"):
                    data = r.json()["data"]
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert data is not None, "the Dagster UI did not answer"
        assets = {"/".join(n["assetKey"]["path"]) for n in data["assetNodes"]}
        assert {"batch_scores", "published_scores", "online_features", "serving_bundle", "candidate_bundle", "training_set",
                "feast_registry", "customer_profiles"} <= assets
        checks = {c["name"] for n in data["assetNodes"] for c in (n.get("assetChecksOrError") or {}).get("checks", [])}
        assert {"scores_fresh", "online_batch_parity", "watermark_lag", "served_features_skew", "served_features_drift"} <= checks
        repo = data["repositoriesOrError"]["nodes"][0]
        assert {s["name"] for s in repo["schedules"]} == {"daily_batch_scores", "hourly_materialization", "weekly_retraining"}
        assert "alert_on_failure" in {s["name"] for s in repo["sensors"]}
    finally:
        proc.terminate()  # SIGTERM to the command alone, as a supervisor sends it
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert "Dagster on http://127.0.0.1" in out, out[-2000:]
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes of the scheduler left running: {left}"  # webserver, daemon, code servers all stopped
