"""Batch scoring on Ray: the same rows as the default engine, exactly once, on a real Ray.

Ray binds every interface and advertises the machine's non-loopback address, so every Ray here
runs inside a network namespace that has only loopback (and its own PID namespace, so killing
the namespace's first process stops every Ray process left in it). The commands are the ones a
user types: `skewless score --engine ray`, `ray start --head`, `ray start --address`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from batch.outputs import TABLE
from skewless.cli import main
from skewless.paths import REDIS_ENV

AS_OF = "2026-10-20T12:00:00"  # inside the 1k data, which ends 2026-11-01
BIN = Path(sys.executable).parent
HEAD_PORT = 6390


class Namespace:
    """A held network + PID namespace with only loopback up; commands run inside with nsenter."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "--pid", "--fork", "--mount-proc", "sleep", "infinity"],
                                       stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        self.pid = None
        while self.pid is None and time.monotonic() < deadline:
            children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            self.pid = int(pids[0]) if pids else None
            time.sleep(0.05)
        if self.pid is None:
            self.holder.kill()
            raise RuntimeError("unshare started no namespace")
        self.run(["ip", "link", "set", "lo", "up"], check=True)

    def argv(self, cmd: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", "-p", "-m", *cmd]

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(cmd), capture_output=True, text=True, env=kw.pop("env", ray_env()), **kw)

    def popen(self, cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(self.argv(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ray_env())

    def close(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # the PID namespace's init: the kernel kills the rest
        self.holder.wait(timeout=30)


def ray_env() -> dict[str, str]:
    """No Redis named (the runs are not published), no Ray auth token for the test cluster."""
    env = {k: v for k, v in os.environ.items() if k not in (REDIS_ENV, "REDIS_URL", "RAY_ADDRESS")}
    return env | {"PATH": f"{BIN}:{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ns():
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("Ray tests run in a network namespace: need root and util-linux's unshare")
    space = Namespace()
    yield space
    space.close()


@pytest.fixture(scope="module")
def cluster(ns, tmp_path_factory):
    """A two-node cluster on 127.0.0.1 inside the namespace: a head and a second node, 1 CPU each."""
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(200 * 2**20), "--disable-usage-stats"]
    head = ns.run([str(BIN / "ray"), "start", "--head", "--port", str(HEAD_PORT), "--include-dashboard=false", *common], timeout=120)
    assert head.returncode == 0, head.stdout + head.stderr
    worker = ns.run([str(BIN / "ray"), "start", "--address", f"127.0.0.1:{HEAD_PORT}", *common], timeout=120)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    yield f"127.0.0.1:{HEAD_PORT}"
    ns.run([str(BIN / "ray"), "stop", "--force"], timeout=120)


def score_args(small_repo, small_bundle, out: Path, *extra: str) -> list[str]:
    _, model_dir = small_bundle
    return ["score", "--repo", str(small_repo), "--model-dir", str(model_dir), "--as-of", AS_OF,
            "--db", str(out / "predictions.duckdb"), "--parquet-dir", str(out / "predictions"), "--top", "0", *extra]


def rows(out: Path) -> pd.DataFrame:
    with duckdb.connect(str(out / "predictions.duckdb"), read_only=True) as con:
        return con.execute(f"SELECT * FROM {TABLE} ORDER BY customer_id").df()


@pytest.fixture(scope="module")
def default_rows(small_repo, small_bundle, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("default")
    result = CliRunner().invoke(main, score_args(small_repo, small_bundle, out))
    assert result.exit_code == 0, result.output
    return rows(out)


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Value for value, probabilities bit for bit; only the run's own id and clock differ."""
    assert len(got) == len(want) and got["customer_id"].is_unique
    assert got["customer_id"].tolist() == want["customer_id"].tolist()
    probs = got["churn_probability"].to_numpy(np.float64).view(np.int64)
    assert np.array_equal(probs, want["churn_probability"].to_numpy(np.float64).view(np.int64))
    for col in want.columns.difference(["churn_probability", "scored_at", "run_id"]):
        assert got[col].tolist() == want[col].tolist(), col


def skewless(*args: str) -> list[str]:
    return [str(BIN / "skewless"), *args]


def test_local_ray_gives_the_default_engines_rows(ns, small_repo, small_bundle, default_rows, tmp_path):
    out = tmp_path / "ray"
    result = ns.run(skewless(*score_args(small_repo, small_bundle, out, "--engine", "ray", "--ray-cpus", "2", "--chunk-rows", "300")), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_rows(rows(out), default_rows)
    ranges = -(-len(default_rows) // 300)
    assert f"ray tasks: {ranges} ranges" in result.stdout and f"ray: {ranges}/{ranges} ranges" in result.stderr
    assert "Started a local Ray" not in result.stderr  # Ray's own INFO lines stay quiet


def test_two_node_cluster_gives_the_same_rows_on_both_nodes(ns, cluster, small_repo, small_bundle, default_rows, tmp_path):
    out = tmp_path / "cluster"
    result = ns.run(skewless(*score_args(small_repo, small_bundle, out, "--engine", "ray", "--address", cluster, "--chunk-rows", "200")), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_rows(rows(out), default_rows)
    assert "on 2 node(s)" in result.stdout, result.stdout


def test_a_killed_worker_is_retried_and_each_customer_is_written_once(ns, cluster, small_repo, small_bundle, default_rows, tmp_path):
    out = tmp_path / "killed"
    run = ns.popen(skewless(*score_args(small_repo, small_bundle, out, "--engine", "ray", "--address", cluster, "--chunk-rows", "100")))
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and run.poll() is None and time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", "^ray::score_range"], capture_output=True, text=True).stdout.split()
        if found:
            killed = int(found[0])
            os.kill(killed, signal.SIGKILL)  # mid-task: Ray sees the worker die and retries the range
        time.sleep(0.05)
    stdout, stderr = run.communicate(timeout=600)
    assert killed is not None, "no score_range task was seen running"
    assert run.returncode == 0, stdout + stderr
    assert_same_rows(rows(out), default_rows)


@pytest.mark.parametrize("case", ["ids", "model", "address"])
def test_bad_input_is_one_line_and_writes_nothing(small_repo, small_bundle, tmp_path, case):
    out = tmp_path / "out"
    extra = ["--engine", "ray"]
    if case == "ids":
        bad = tmp_path / "ids.txt"
        bad.write_text("customer_id\n12\nnot-a-number\n")
        extra += ["--customers", str(bad)]
    elif case == "model":
        extra += ["--model", "20990101T000000Z-deadbeef"]
    else:
        extra += ["--address", "127.0.0.1:1"]  # nobody listens there
    result = CliRunner().invoke(main, score_args(small_repo, small_bundle, out, *extra))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_engine_options_need_the_ray_engine(small_repo, small_bundle, tmp_path):
    result = CliRunner().invoke(main, score_args(small_repo, small_bundle, tmp_path / "out", "--address", "127.0.0.1:6390"))
    assert result.exit_code != 0 and "go with --engine ray" in result.output
