"""Every benchmark still runs: each `bench/*.py --smoke` (tiny scale, seconds) ends well and
prints its Markdown table under a stamp line, as docs/benchmarks.md holds them.

Speed is never asserted here (the machine is shared); a benchmark that no longer runs is.
Results and generated data go to a temporary directory (SKEWLESS_BENCH_RESULTS).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from skewless.paths import PROJECT_DIR

STAMP = re.compile(r"^_bench/[a-z_]+\.py[^_]*: \d{4}-\d\d-\d\d \d\d:\d\d UTC, commit \S+, \d+ CPUs, .+_$", re.M)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


def smoke(results, script: str) -> str:
    env = dict(os.environ, SKEWLESS_BENCH_RESULTS=str(results))
    r = subprocess.run([sys.executable, f"bench/{script}", "--smoke"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"bench/{script} --smoke failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert STAMP.search(r.stdout), f"bench/{script}: no stamp line above its table:\n{r.stdout[-2000:]}"
    assert re.search(r"^\|(---\|)+$", r.stdout, re.M), f"bench/{script}: no Markdown table:\n{r.stdout[-2000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def online(results):
    """bench/online.py first: it trains the bundle the model-call and request-parts benchmarks use."""
    return smoke(results, "online.py")


def test_online_benchmark_runs_against_feast_serve(online):
    assert "| feast serve /get-online-features (1 ID) |" in online and "| skewless POST /predict |" in online


@pytest.mark.parametrize("script", ["model_call.py", "request_parts.py"])
def test_in_process_benchmarks_run(online, results, script):
    smoke(results, script)


def test_batch_benchmark_runs_against_the_bare_feast_retrieval(results):
    assert "bare Feast to_df s" in smoke(results, "batch.py")


def test_retrieval_benchmark_runs_both_offline_stores(results):
    out = smoke(results, "retrieval.py")
    assert re.search(r"^\| 2,000 \| batch \| [\d,]+ \| [\d.]+ \| [\d.]+ ", out, re.M) and "| training |" in out and "| batch, streamed |" in out, out


def test_explain_benchmark_runs(results):
    out = smoke(results, "explain.py")
    assert "| 1 customer(s) in process" in out and "every customer explained" in out, out


def test_materialize_benchmark_runs_the_stock_engine_too(results):
    out = smoke(results, "materialize.py")
    assert re.search(r"^\| stock \| [\d,]+ \|", out, re.M) and "byte-identical to stock on a random sample" in out and ": yes" in out, out


def test_stream_benchmark_loses_nothing(results):
    out = smoke(results, "stream.py")
    assert re.search(r"^\| 200 \| \d+ \| [\d,]+ \| 0 \|", out, re.M), out
