"""Precomputed scores served by customer ID: what /scores answers is what DuckDB holds, and its age is the truth.

A private copy of the live repo (data ending today, the session's bundle) and a private Redis:
`skewless score` publishes each committed run to that Redis (the churn_scores view, by the
project's engine), the service answers /scores from it.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import datetime, timedelta, timezone

import duckdb
import pytest
from click.testing import CliRunner
from conftest import copy_repo, feast_apply
from fastapi.testclient import TestClient

from batch import job
from feast_plugins.redis_server import throwaway_redis
from feast_plugins.served_runs import read_runs
from online.app import create_app
from online.settings import Settings
from skewless.cli import main
from skewless.store import REDIS_ENV


@pytest.fixture(scope="module")
def repo(live, tmp_path_factory, redis_endpoint):
    """The live repo's definitions and data in a folder of its own, so its scores directory is this module's."""
    repo = copy_repo(tmp_path_factory.mktemp("scores") / "feature_repo")
    for f in (live.repo / "data").glob("*.parquet"):
        shutil.copy(f, repo / "data")
    assert feast_apply(repo, redis_endpoint).returncode == 0
    return repo


@pytest.fixture()
def redis(monkeypatch):
    with throwaway_redis() as endpoint:
        monkeypatch.setenv("REDIS_URL", endpoint.url)
        monkeypatch.setenv(REDIS_ENV, endpoint.feast)
        yield endpoint


@pytest.fixture()
def db(repo, tmp_path):
    """A new predictions database; the scores directory the view reads starts empty too."""
    shutil.rmtree(repo.parent / "data" / "predictions", ignore_errors=True)
    return tmp_path / "predictions.duckdb"


def score(repo, live, db, *args):
    return CliRunner().invoke(main, ["score", "--repo", str(repo), "--model-dir", str(live.model_dir), "--db", str(db), "--top", "0", *args])


def rows(db, run_id=None) -> dict[int, dict]:
    with duckdb.connect(str(db), read_only=True) as con:
        where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
        frame = con.execute(f"SELECT * FROM churn_predictions {where}", params).df()
    return {int(r.customer_id): r._asdict() for r in frame.itertuples(index=False)}


def newest_run(db) -> str:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT run_id FROM churn_runs WHERE kind = 'full' ORDER BY as_of DESC, scored_at DESC LIMIT 1").fetchone()[0]


def client(repo, live, tmp_path, **settings):
    return TestClient(create_app(Settings(repo_path=repo, model_dir=live.model_dir, feature_log=False, **settings)))


def served(c, ids) -> dict[int, dict]:
    answers = []
    for at in range(0, len(ids), 1000):
        r = c.post("/scores/batch", json={"customer_ids": ids[at:at + 1000]})
        assert r.status_code == 200, r.text
        answers += r.json()["scores"]
    return {a["customer_id"]: a for a in answers}


def test_every_scored_customer_is_served_as_its_duckdb_row(repo, live, redis, db, tmp_path):
    r = score(repo, live, db, "--as-of", "now")
    assert r.exit_code == 0, r.output
    run_id = newest_run(db)
    assert f"published to redis 127.0.0.1:{redis.port}" in r.output and f"full run {run_id}" in r.output
    expected = rows(db, run_id)
    with client(repo, live, tmp_path) as c:
        got = served(c, list(expected) + [10**12])
        one = c.get(f"/scores/{next(iter(expected))}")
        ready = c.get("/ready?route=scores")
    assert got[10**12]["status"] == "not_found"
    assert len(expected) > 200
    for cid, row in expected.items():
        s = got[cid]
        assert s["status"] == "ok" and s["source"] == "batch" and s["current_model"] is True
        assert (s["churn_probability"], s["churn_prediction"], s["risk_segment"], s["model_name"], s["model_version"], s["run_id"], s["run_kind"]) == (
            row["churn_probability"], row["churn_prediction"], row["risk_segment"], row["model_name"], row["model_version"], row["run_id"], "full")
        assert datetime.fromisoformat(s["as_of"]) == row["as_of"].to_pydatetime().replace(tzinfo=timezone.utc)
    assert one.status_code == 200 and one.json()["age_seconds"] >= 0
    assert ready.status_code == 200 and ready.json()["scores"]["run_id"] == run_id and ready.json()["scores"]["rows"] == len(expected)


def test_rerun_replaces_a_killed_run_changes_nothing_an_older_one_never_wins(repo, live, redis, db, tmp_path, monkeypatch):
    as_of = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    assert score(repo, live, db, "--as-of", as_of.isoformat()).exit_code == 0
    first = newest_run(db)
    assert score(repo, live, db, "--as-of", as_of.isoformat()).exit_code == 0  # the same run key again
    rerun = newest_run(db)
    assert rerun != first
    ids = list(rows(db, rerun))
    with client(repo, live, tmp_path) as c:
        assert {s["run_id"] for s in served(c, ids).values()} == {rerun}  # replaced, every customer

    real_score = job.score
    calls = {"n": 0}

    def killed_on_the_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-run")
        return real_score(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(job, "score", killed_on_the_second_chunk)
        r = score(repo, live, db, "--as-of", "now", "--chunk-rows", "100")
    assert r.exit_code == 1 and "killed mid-run" in r.output
    with client(repo, live, tmp_path) as c:
        assert {s["run_id"] for s in served(c, ids).values()} == {rerun}  # the previous run is still what is served
    assert read_runs(redis.client(), "skewless")["churn"].run_id == rerun

    assert score(repo, live, db, "--as-of", (as_of - timedelta(days=2)).isoformat()).exit_code == 0  # an older as-of
    with client(repo, live, tmp_path) as c:
        assert {s["run_id"] for s in served(c, ids).values()} == {rerun}
    assert read_runs(redis.client(), "skewless")["churn"].run_id == rerun


def test_a_score_past_its_budget_is_stale_and_ready_says_why(repo, live, redis, db, tmp_path):
    assert score(repo, live, db, "--as-of", "now").exit_code == 0
    cid = next(iter(rows(db)))
    time.sleep(1.1)
    with client(repo, live, tmp_path, score_max_age="1s") as c:  # the clock is past the budget
        r = c.get(f"/scores/{cid}")
        assert r.status_code == 404 and r.json()["stale"] is True and r.json()["age_seconds"] > 1 and r.json()["max_age_seconds"] == 1
        batch = c.post("/scores/batch", json={"customer_ids": [cid]}).json()["scores"][0]
        assert batch["status"] == "stale" and "churn_probability" not in batch
        ready = c.get("/ready")
        assert ready.status_code == 503 and "over its freshness budget" in ready.json()["reason"] and "batch schedule is behind" in ready.json()["reason"]
        assert c.get("/ready?route=scores").status_code == 503
        assert "scores" not in (c.get("/ready?route=predict").json().get("reason") or "")  # /predict's readiness is its own
        metrics = c.get("/metrics").text
    stale = re.search(r'skewless_score_answers_total\{outcome="stale"\} ([0-9.]+)', metrics)
    assert stale and float(stale.group(1)) >= 2
    assert "skewless_score_run_age_seconds{model=\"churn\"}" in metrics
    with client(repo, live, tmp_path) as c:  # the default budget (weekly + a day): current
        assert c.get(f"/scores/{cid}").status_code == 200


@pytest.mark.parametrize("path", ["/scores/abc", "/scores/-1", f"/scores/{2**63}", "/scores/1.5", "/scores/1e3"])
def test_bad_ids_are_422(repo, live, redis, tmp_path, path):
    with client(repo, live, tmp_path) as c:
        r = c.get(path)
    assert r.status_code == 422 and r.json()["message"], r.text


@pytest.mark.parametrize("body", [{"customer_ids": []}, {"customer_ids": list(range(1001))}, {"customer_ids": ["1"]},
                                  {"customer_ids": [-1]}, {"customer_id": 1}, {"customer_ids": [1], "x": 2}, [1, 2]])
def test_bad_batch_bodies_are_422(repo, live, redis, tmp_path, body):
    with client(repo, live, tmp_path) as c:
        assert c.post("/scores/batch", json=body).status_code == 422


def test_status_and_the_service_see_a_flushed_redis(repo, live, redis, db, tmp_path):
    assert score(repo, live, db, "--as-of", "now").exit_code == 0
    status = CliRunner().invoke(main, ["score", "status", "--db", str(db), "--repo", str(repo)])
    assert status.exit_code == 0 and "serves the same full run" in status.output, status.output
    cid = next(iter(rows(db)))
    redis.client().flushall()
    behind = CliRunner().invoke(main, ["score", "status", "--db", str(db), "--repo", str(repo)])
    assert behind.exit_code == 1 and "serves no full run" in behind.output and "skewless materialize" in behind.output
    with client(repo, live, tmp_path) as c:  # "customer has no stored score" would be a lie: this Redis holds none
        for r in (c.get(f"/scores/{cid}"), c.post("/scores/batch", json={"customer_ids": [cid]})):
            assert r.status_code == 503 and "churn_scores not materialized into this Redis" in r.json()["detail"], r.text
            assert r.headers["Retry-After"] == "1"


def test_a_redis_where_no_run_was_published_is_ready_for_predict_not_for_scores(repo, live, redis, db, tmp_path):
    from datetime import datetime, timezone

    from feast_plugins.materialize import materialize
    from skewless.store import open_store

    materialize(open_store(repo), datetime.now(timezone.utc))  # the features; the scores directory is empty
    with client(repo, live, tmp_path) as c:
        assert c.get("/ready").status_code == 200 and "scores" not in c.get("/ready").json()
        r = c.get("/ready?route=scores")
        assert r.status_code == 503 and "no full batch run of churn is published" in r.json()["reason"]
        assert c.get("/scores/1").json() == {"detail": "customer 1 has no stored score", "stale": False}
