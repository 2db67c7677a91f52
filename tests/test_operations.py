"""Parity through the states a deployment goes through, not only the ones a test builds in one go.

- a fresh, flushed or replaced Redis: the online store's own watermark makes the next plain
  incremental run (Feast's `materialize_incremental`, what the stock CLI runs) load it whole,
  and the service is not ready until then;
- a run interrupted between views or inside one: the next incremental run leaves Redis and the
  watermarks exactly as one clean run;
- a Redis the user named that does not answer is never replaced by an empty one;
- SIGTERM on `skewless serve` leaves no redis-server and no temp directory behind;
- the repo opened from any working directory, in Python and with `feast -c`, is one registry.

Everything runs against real redis-server processes and Feast; each test writes to its own
throwaway Redis, except where it reads the session's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from feast_plugins import materialize_engine, watermark
from feast_plugins.materialize import materialize
from feast_plugins.redis_server import free_port, throwaway_redis
from online.app import create_app
from online.settings import Settings
from synthetic.generate import ACTIVITY_FILE, PROFILES_FILE
from skewless.store import REDIS_ENV, open_store

PROB_TOL = 1e-6


def dump(endpoint) -> tuple[dict, dict]:
    """(every feature key's hash, the watermarks without their write times) of a Redis."""
    client = endpoint.client(timeout=30)
    keys = {k: client.hgetall(k) for k in client.scan_iter(count=1000) if not k.startswith(watermark.KEY_PREFIX)}
    marks = {v: (m.end, m.registry, m.definition) for v, m in watermark.read_all(client, "skewless").items()}
    return keys, marks


def store_on(repo, endpoint, monkeypatch):
    monkeypatch.setenv(REDIS_ENV, endpoint.feast)
    monkeypatch.delenv("REDIS_URL", raising=False)
    return open_store(repo)


@pytest.fixture(scope="module")
def sample(live) -> list[int]:
    """60 customers: a random spread of everyone in the data (so some have expired activity), and
    one ID nobody has, which both paths must report as not found."""
    ids = pd.read_parquet(live.repo / "data" / PROFILES_FILE, columns=["customer_id"])["customer_id"].drop_duplicates()
    return ids.sample(60, random_state=5).astype(int).tolist() + [10**12]


def served_vs_batch(live, ids, tmp_path) -> tuple[dict, pd.Series, pd.Series]:
    """/ready, then /predict/batch for `ids` and the batch job at the same instant: (ready, online p, batch p)."""
    from batch.job import run_batch

    settings = Settings(repo_path=live.repo, model_dir=live.model_dir, feature_log=False)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/ready")
        r = client.post("/predict/batch", json={"customer_ids": ids})
    assert r.status_code == 200, r.text
    preds = [p for p in r.json()["predictions"] if p["status"] == "ok"]
    as_of = datetime.fromisoformat(preds[0]["features_as_of"])
    online = pd.Series({p["customer_id"]: p["churn_probability"] for p in preds}).sort_index()
    summary = run_batch(live.store, live.bundle, as_of, pd.Series(ids), tmp_path / "p.duckdb", tmp_path / "p")
    import duckdb

    with duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True) as con:
        batch = con.execute("SELECT customer_id, churn_probability FROM churn_predictions").df()
    assert 10**12 in summary.not_found and sorted(summary.not_found) == sorted(set(ids) - set(online.index))
    return ready, online, batch.set_index("customer_id")["churn_probability"].sort_index()


def test_plain_incremental_run_into_a_fresh_redis_loads_it_whole_and_flushall_is_caught(live, sample, tmp_path, monkeypatch):
    """A: materialized; B: a fresh Redis, then the plain incremental run the stock CLI makes.
    B must equal A byte for byte. FLUSHALL on B: not ready, with the reason; the next plain run
    refills it; ready again, and /predict equals batch at the same instant."""
    now = datetime.now(timezone.utc)
    with throwaway_redis() as a, throwaway_redis() as b:
        materialize(store_on(live.repo, a, monkeypatch), now)
        # the registry now records runs up to `now`: a registry-driven run would load nothing into B
        store_on(live.repo, b, monkeypatch).materialize_incremental(now)
        assert dump(b) == dump(a)
        assert len(dump(a)[0]) > 500 and set(dump(a)[1]) == {"customer_profile", "customer_activity", "account_state", "churn_scores"}

        ready, online, batch = served_vs_batch(live, sample, tmp_path / "before")
        assert ready.status_code == 200 and len(online) > 40
        assert list(online.index) == list(batch.index) and np.abs(online - batch).max() <= PROB_TOL

        b.client().flushall()
        settings = Settings(repo_path=live.repo, model_dir=live.model_dir, feature_log=False)
        with TestClient(create_app(settings)) as client:
            r = client.get("/ready")
            assert r.status_code == 503
            assert "customer_activity: no watermark" in r.json()["reason"] and "skewless materialize" in r.json()["reason"]
            metrics = client.get("/metrics").text
            assert 'skewless_feature_watermark_age_seconds{view="customer_activity"} -1.0' in metrics
            store_on(live.repo, b, monkeypatch).materialize_incremental(datetime.now(timezone.utc))
            assert client.get("/ready").status_code == 200  # no restart: /ready reads the watermarks each time
        assert dump(b)[0] == dump(a)[0]  # nothing newer arrived since: the same bytes
        ready, online, batch = served_vs_batch(live, sample, tmp_path / "after")
        assert ready.status_code == 200
        assert list(online.index) == list(batch.index) and np.abs(online - batch).max() <= PROB_TOL


def test_a_watermark_from_another_registry_or_an_old_definition_does_not_count(live, tmp_path, monkeypatch, redis_endpoint):
    from conftest import copy_repo, feast_apply

    now = datetime.now(timezone.utc)
    other = copy_repo(tmp_path / "feature_repo")  # another checkout: same project name, its own registry
    for f in (live.repo / "data").glob("*.parquet"):
        (other / "data" / f.name).write_bytes(f.read_bytes())
    assert feast_apply(other, redis_endpoint).returncode == 0
    with throwaway_redis() as r:
        materialize(store_on(other, r, monkeypatch), now)
        marks = watermark.read_all(r.client(), "skewless")
        store = store_on(live.repo, r, monkeypatch)
        registry = watermark.registry_id(store.registry, store.project)
        view = store.get_feature_view("customer_activity")
        assert marks["customer_activity"].registry != registry
        assert watermark.held(marks, "customer_activity", view, registry) is None
        assert "another Feast registry" in watermark.why_not_held(marks, "customer_activity", view, registry)
        summary = materialize(store, now)
        assert summary["reasons"]["customer_activity"].startswith("its watermark is from another Feast registry")
        assert summary["after"]["customer_activity"].registry == registry
        # a view whose definition changed (here: its TTL) no longer counts as held
        view.ttl = view.ttl * 2
        assert watermark.held(watermark.read_all(r.client(), "skewless"), "customer_activity", view, registry) is None


class Interrupted(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("where", ["between views", "inside a view"])
def test_interrupted_run_then_incremental_run_equals_one_clean_run(live, monkeypatch, where):
    now = datetime.now(timezone.utc)
    real_write = materialize_engine.write_view
    calls = []

    def interrupting(plan, client, start, end, options, on_batch=None):
        calls.append(plan.name)
        if where == "between views" and len(calls) == 2:
            raise Interrupted  # the first view is written and its watermark moved; the second never starts

        def stop_half_way(rows):
            raise Interrupted

        small = options.model_copy(update={"batch_rows": 100, "keys_per_call": 10})
        return real_write(plan, client, start, end, small, on_batch=stop_half_way if where == "inside a view" else None)

    with throwaway_redis() as interrupted, throwaway_redis() as clean:
        store = store_on(live.repo, interrupted, monkeypatch)
        with monkeypatch.context() as m:
            m.setattr(materialize_engine, "write_view", interrupting)
            with pytest.raises(Interrupted):
                store.materialize_incremental(now)
        partial_keys, partial_marks = dump(interrupted)
        if where == "inside a view":
            # some rows landed; the view cut short has no watermark (a view before it with no rows to write may)
            assert 0 < len(partial_keys) < 500 and calls[-1] not in partial_marks and set(partial_marks) <= set(calls[:-1])
        else:
            assert len(partial_marks) == 1
        store.materialize_incremental(now)  # the scheduler's next run
        store_on(live.repo, clean, monkeypatch).materialize_incremental(now)
        assert dump(interrupted) == dump(clean)


def test_named_redis_that_does_not_answer_is_an_error_not_a_replacement(live, monkeypatch):
    from skewless.cli import main

    port = free_port()  # nothing listens there
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
    r = CliRunner().invoke(main, ["materialize", "--repo", str(live.repo)])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "does not answer" in lines[0] and "REDIS_URL" in lines[0], r.output


def _serve(live, env: dict, port: int, tmp: Path) -> subprocess.Popen:
    skewless = Path(sys.executable).with_name("skewless")
    env = dict(os.environ, **env, TMPDIR=str(tmp), SKEWLESS_FEATURE_LOG=env.get("SKEWLESS_FEATURE_LOG", "false"))
    return subprocess.Popen([str(skewless), "serve", "--port", str(port), "--repo", str(live.repo), "--model-dir", str(live.model_dir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(url: str, status: int, proc: subprocess.Popen, seconds: float = 120) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the service exited: {proc.stdout.read()}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == status:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never answered {status}")


def test_serve_with_a_named_redis_down_is_not_ready_then_recovers(live, tmp_path, monkeypatch):
    redis_port, port = free_port(), free_port()
    proc = _serve(live, {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", REDIS_ENV: ""}, port, tmp_path)
    try:
        r = _wait(f"http://127.0.0.1:{port}/ready", 503, proc)
        assert f"127.0.0.1:{redis_port}" in r.json()["reason"] and "not answering" in r.json()["reason"]
        assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"customer_id": 1}).status_code == 503
        with throwaway_redis(redis_port) as endpoint:  # the named Redis comes up, empty
            r = _wait(f"http://127.0.0.1:{port}/ready", 503, proc)
            assert "no watermark" in r.json()["reason"]
            materialize(store_on(live.repo, endpoint, monkeypatch), datetime.now(timezone.utc))
            assert _wait(f"http://127.0.0.1:{port}/ready", 200, proc).json()["ready"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_sigterm_on_serve_leaves_no_redis_and_no_temp_dir(live, tmp_path):
    port = free_port()
    proc = _serve(live, {"REDIS_URL": "", REDIS_ENV: ""}, port, tmp_path)  # no Redis named: a throwaway one
    try:
        _wait(f"http://127.0.0.1:{port}/health", 200, proc)
        children = subprocess.run(["pgrep", "-P", str(proc.pid), "redis-server"], capture_output=True, text=True).stdout.split()
        assert len(children) == 1 and any(p.name.startswith("skewless-redis-") for p in tmp_path.iterdir())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0  # terminated, and says so
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    assert not Path(f"/proc/{children[0]}").exists(), "the throwaway redis-server outlived the service"
    assert not any(p.name.startswith("skewless-redis-") for p in tmp_path.iterdir())


FIND_SERVICES = "from feast import FeatureStore; print([s.name for s in FeatureStore(repo_path={path!r}).list_feature_services()])"


def test_the_repo_opens_from_any_working_directory_with_one_registry(small_repo):
    """From `/`, the project root (the repo's parent) and the repo itself, in Python and with the
    stock CLI's `-c`: the same registry, and no registry file anywhere but the repo's data/."""
    feast = Path(sys.executable).with_name("feast")
    places = {Path("/"): str(small_repo), small_repo.parent: "feature_repo", small_repo: "."}
    before = set(Path("/").glob("data/registry.db")) | set(small_repo.parent.glob("data/registry.db"))
    for cwd, path in places.items():
        py = subprocess.run([sys.executable, "-c", FIND_SERVICES.format(path=path)], cwd=cwd, capture_output=True, text=True)
        assert py.returncode == 0 and "churn_v1" in py.stdout, (cwd, py.stderr[-500:])
        cli = subprocess.run([str(feast), "-c", path, "feature-services", "list"], cwd=cwd, capture_output=True, text=True)
        assert cli.returncode == 0 and "churn_v1" in cli.stdout, (cwd, cli.stderr[-500:])
    after = set(Path("/").glob("data/registry.db")) | set(small_repo.parent.glob("data/registry.db"))
    assert after == before and not (small_repo / "registry.db").exists()
    assert [p.name for p in (small_repo / "data").glob("*registry*")] == ["registry.db"]  # no temp file left


def test_a_repo_never_applied_reads_empty_and_writes_nothing(tmp_path):
    from conftest import copy_repo

    repo = copy_repo(tmp_path / "feature_repo")
    store = open_store(repo)
    assert store.list_feature_services() == []
    assert list((repo / "data").iterdir()) == []  # Feast would have written an empty registry here


def test_a_second_writer_cannot_silently_drop_the_first_ones_change(small_repo, tmp_path):
    """Two processes hold the registry; one writes; the other's stale write is refused, not applied over it."""
    import shutil

    from feast_plugins.registry_store import RegistryConflict

    repo = tmp_path / "feature_repo"
    shutil.copytree(small_repo, repo, ignore=shutil.ignore_patterns("*.parquet"))
    first, second = open_store(repo), open_store(repo)
    first.registry.cached_registry_proto  # both have read the same version
    proto = second.registry.cached_registry_proto
    first.registry.commit()  # a write: the file's version moves on
    with pytest.raises(RegistryConflict, match="changed by another process"):
        second.registry._registry_store.update_registry_proto(proto)
