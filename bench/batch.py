"""Benchmark the batch path against Feast's bare retrieval, in the same run.

    uv run python bench/batch.py --customers 1000000 [--customers 50000 ...]

For each scale: generate data into bench/results/batch-<n>/ (a copy of feature_repo), apply,
train a bundle on a sample, then time in separate processes (peak RSS of each via wait4):
  1. bare Feast: `get_historical_features(<churn_v1>, filter_by_created_timestamp=True).to_df()`
     for all active customers at the as-of time;
  2. `skewless score --as-of T` end to end (customers, retrieval, scoring, DuckDB + Parquet).
Prints a table with seconds, rows/s, peak RSS and the ratio to the bare retrieval.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

BARE = """
import json, sys, time, pandas as pd
from datetime import datetime, timezone
from batch.retrieval import active_customers
from training.dataset import entity_frame
from training.store import open_store
repo, as_of = sys.argv[1], datetime.fromisoformat(sys.argv[2])
fs = open_store(repo)
ids = active_customers(fs, as_of)
keys = pd.DataFrame({"customer_id": ids.to_numpy(), "event_timestamp": pd.Timestamp(as_of)})
t = time.perf_counter()
df = fs.get_historical_features(entity_df=entity_frame(keys), features=fs.get_feature_service("churn_v1"), filter_by_created_timestamp=True).to_df()
print(json.dumps({"rows": len(df), "seconds": time.perf_counter() - t}))
"""


def run(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Run a command; return (wall seconds, peak RSS in MB of that process, stdout)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed with exit code {proc.returncode}")
    return time.perf_counter() - started, usage.ru_maxrss // 1024, out


def prepare(n: int) -> tuple[Path, Path]:
    base = RESULTS / f"batch-{n}"
    repo, models = base / "feature_repo", base / "models"
    if not (repo / "data" / "registry.db").exists():
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
        sk = [sys.executable, "-m", "training"]
        subprocess.run(sk + ["generate", "--customers", str(n), "--end", "2026-11-01", "--out", str(repo / "data")], check=True, cwd=ROOT)
        subprocess.run(sk + ["apply", "--repo", str(repo)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        subprocess.run(sk + ["train", "--repo", str(repo), "--model-dir", str(models), "--max-rows", "200000"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return repo, models


def bench(n: int, as_of: str) -> dict:
    repo, models = prepare(n)
    bare_wall, bare_rss, out = run([sys.executable, "-c", BARE, str(repo), as_of])
    bare = json.loads(out.strip().splitlines()[-1])
    out_dir = repo.parent / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "training", "score", "--as-of", as_of, "--repo", str(repo), "--model-dir", str(models),
           "--db", str(out_dir / "predictions.duckdb"), "--parquet-dir", str(out_dir / "predictions")]
    wall, rss, out = run(cmd)
    line = next(l for l in out.splitlines() if l.strip().startswith("time:"))
    stages = dict(part.strip().rsplit(" ", 1) for part in line.split(":", 1)[1].split(";")[0].split(","))
    job = sum(float(v.rstrip("s")) for v in stages.values())
    return {"customers": n, "rows": bare["rows"], "bare_seconds": bare["seconds"], "bare_rss_mb": bare_rss,
            "score_job_seconds": job, "score_wall_seconds": wall, "score_rss_mb": rss, "stages": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, action="append", help="scale(s) to run (default 50000)")
    ap.add_argument("--as-of", default="2026-10-31T12:00:00+00:00")
    args = ap.parse_args()
    results = [bench(n, args.as_of) for n in (args.customers or [50_000])]
    print(f"\n{'customers':>10} {'scored':>10} {'bare Feast s':>13} {'bare RSS MB':>12} {'score job s':>12} {'score wall s':>13} {'rows/s':>10} {'score RSS MB':>13} {'job/bare':>9}")
    for r in results:
        print(f"{r['customers']:>10,} {r['rows']:>10,} {r['bare_seconds']:>13.2f} {r['bare_rss_mb']:>12,} {r['score_job_seconds']:>12.2f} "
              f"{r['score_wall_seconds']:>13.2f} {r['rows'] / r['score_job_seconds']:>10,.0f} {r['score_rss_mb']:>13,} {r['score_job_seconds'] / r['bare_seconds']:>9.2f}")
        print(f"{'':>10} stages: {r['stages']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "batch.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
