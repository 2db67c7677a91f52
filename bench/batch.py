"""Benchmark `skewless score` against Feast's bare retrieval, in the same run.

    .venv/bin/python bench/batch.py --customers 50000 --customers 1000000 [--customers 10000000] [--engine ray]

For each scale: a copy of feature_repo in bench/results/batch-<n>/ over the shared generated data
(bench/generated_data.py), applied, with a bundle trained on a sample of labels (all reused when
already there), then, each in its own process (peak RSS of that process from wait4):

  1. `skewless score --as-of T` end to end: active customers, retrieval, on-demand features,
     scoring, DuckDB + Parquet writes; its --summary-json gives the time and peak RSS of each
     stage;
  2. bare Feast: `get_historical_features(features=<churn_v1>, filter_by_created_timestamp=True)
     .to_df()` on Feast 0.67's own DuckDB offline store for the same customers at T (the IDs the score run wrote), timed around that call
     alone.

With `--engine ray`, the same run also scores with `skewless score --engine ray` (a local Ray
started by the command, this machine's CPUs, inside a network namespace with only loopback when
run as root), checks that its rows equal the default engine's (probabilities bit for bit), and
reports its rows/s, the driver's peak RSS and each Ray worker's RSS, the per-task throughput and
the ratio of wall times; then projects 100M customers on 1, 4 and 16 nodes from the measured
per-task throughput (the assumptions are printed with the table).

The ratio compares like with like: the score run's in-process wall time (every stage, from
resolving the contract to the committed outputs) over the bare `to_df()` time. Both processes
also pay ~7-10 s of interpreter start, Feast import and store opening, shown as process time.
Results go to bench/results/batch-<n>.json, one file per scale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from generated_data import link_data
from measure import run_measured

from report import RESULTS, ROOT, stamp
sys.path.insert(0, str(ROOT))  # the project's packages before this folder's scripts of the same names
SMOKE_CUSTOMERS = 2_000
DEFAULT_AS_OF = "2026-10-31T12:00:00+00:00"  # the generated data ends 2026-11-01 (bench/generated_data.py)

BARE = """
import json, sys, time
import pandas as pd
from feast_plugins.asof_offline_store import with_feast_duckdb
from training.dataset import entity_frame
from skewless.store import open_store
repo, as_of, ids_file = sys.argv[1], pd.Timestamp(sys.argv[2]), sys.argv[3]
store = with_feast_duckdb(open_store(repo))
ids = pd.read_parquet(ids_file)["customer_id"].to_numpy()
keys = pd.DataFrame({"customer_id": ids, "event_timestamp": as_of})
service = store.get_feature_service("churn_v1")
t = time.perf_counter()
df = store.get_historical_features(entity_df=entity_frame(keys), features=service, filter_by_created_timestamp=True).to_df()
print(json.dumps({"rows": len(df), "seconds": time.perf_counter() - t}))
"""


def prepare(n: int) -> tuple[Path, Path]:
    """bench/results/batch-<n>/: generated data, applied registry, a trained bundle (reused)."""
    base = RESULTS / f"batch-{n}"
    repo, models = base / "feature_repo", base / "models"
    ready = (repo / "data" / "registry.db").exists() and (models / "churn" / "latest" / "manifest.json").exists()
    if not ready:
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__", "*.db"))
        link_data(n, repo / "data")
        sk = [sys.executable, "-m", "skewless"]
        print(f"preparing {n:,} customers in {base}", file=sys.stderr)
        subprocess.run(sk + ["apply", "--repo", str(repo)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        subprocess.run(sk + ["train", "--repo", str(repo), "--model-dir", str(models), "--max-rows", "200000"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return repo, models


def bench(n: int, as_of: str, skip_bare: bool, bare_rss_cap_mb: float | None, engine: str = "local") -> dict:
    repo, models = prepare(n)
    out_dir = repo.parent / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    summary_file = out_dir / "summary.json"
    cmd = [sys.executable, "-m", "skewless", "score", "--as-of", as_of, "--repo", str(repo), "--model-dir", str(models),
           "--out-dir", str(out_dir), "--summary-json", str(summary_file), "--top", "0"]
    score_wall, score_rss, _, _ = run_measured(cmd)
    summary = json.loads(summary_file.read_text())
    ray = bench_ray(cmd, out_dir, repo.parent / "out-ray") if engine == "ray" else None

    ids_file = out_dir / "scored_ids.parquet"
    import duckdb

    with duckdb.connect(str(out_dir / "predictions.duckdb"), read_only=True) as con:
        con.execute(f"COPY (SELECT customer_id FROM churn_predictions ORDER BY customer_id) TO '{ids_file}' (FORMAT parquet)")
    result = {
        "customers": n,
        "scored": summary["customers"],
        "score_seconds": summary["wall_seconds"],
        "score_process_seconds": score_wall,
        "score_rss_mb": score_rss,
        "rows_per_second": summary["customers"] / summary["wall_seconds"],
        "stages_seconds": summary["seconds"],
        "stages_peak_rss_mb": summary["peak_rss_mb"],
    }
    if ray is not None:
        result["ray"] = ray
    if not skip_bare:
        bare_wall, bare_rss, out, killed = run_measured([sys.executable, "-c", BARE, str(repo), as_of, str(ids_file)], bare_rss_cap_mb)
        if killed:
            result |= {"bare_seconds": None, "bare_killed_at_rss_mb": bare_rss_cap_mb, "bare_process_seconds": bare_wall}
        else:
            bare = json.loads(out.strip().splitlines()[-1])
            assert bare["rows"] == summary["customers"], (bare["rows"], summary["customers"])
            result |= {"bare_seconds": bare["seconds"], "bare_process_seconds": bare_wall, "bare_rss_mb": bare_rss,
                       "ratio": summary["wall_seconds"] / bare["seconds"]}
    return result


def in_loopback_namespace(cmd: list[str]) -> list[str]:
    """Ray binds every interface: as root, run it where only loopback exists."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return cmd
    return ["unshare", "--net", "--fork", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]


def bench_ray(cmd: list[str], local_out: Path, out_dir: Path) -> dict:
    """The same score run on a local Ray; its rows checked against the default engine's."""
    import duckdb
    import numpy as np

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    summary_file = out_dir / "summary.json"
    ray_cmd = [(str(out_dir) if c == str(local_out) else str(summary_file) if c == str(local_out / "summary.json") else c) for c in cmd]
    wall, rss, _, _ = run_measured(in_loopback_namespace(ray_cmd + ["--engine", "ray"]))
    summary = json.loads(summary_file.read_text())
    query = "SELECT customer_id, churn_probability FROM churn_predictions ORDER BY customer_id"
    with duckdb.connect(str(local_out / "predictions.duckdb"), read_only=True) as a, duckdb.connect(str(out_dir / "predictions.duckdb"), read_only=True) as b:
        want, got = a.execute(query).fetchnumpy(), b.execute(query).fetchnumpy()
    same = bool(np.array_equal(want["customer_id"], got["customer_id"])
                and np.array_equal(want["churn_probability"].view(np.int64), got["churn_probability"].view(np.int64)))
    tasks = summary["chunk_seconds"]
    per_task = sorted(t["rows"] / (t["retrieve"] + t["score"]) for t in tasks)
    workers = {t["pid"]: t["rss_mb"] for t in tasks}
    return {
        "scored": summary["customers"], "same_rows": same, "seconds": summary["wall_seconds"], "process_seconds": wall,
        "rows_per_second": summary["customers"] / summary["wall_seconds"], "driver_rss_mb": rss,
        "worker_rss_mb_max": max(workers.values()), "workers": len(workers), "tasks": len(tasks),
        "task_rows_per_second_median": per_task[len(per_task) // 2],
        "task_setup_seconds_max": max(t["setup"] for t in tasks),
    }


PROJECT_TO = 100_000_000
CPUS_PER_NODE = 2  # this machine's


def projection(results: list[dict]) -> str:
    """100M customers on 1, 4 and 16 nodes like this one, from the largest measured Ray run."""
    r = max((r for r in results if "ray" in r), key=lambda r: r["customers"], default=None)
    if r is None:
        return ""
    node_rate, task_rate = r["ray"]["rows_per_second"], r["ray"]["task_rows_per_second_median"]
    write_rate = r["customers"] / max(sum(v for k, v in r["stages_seconds"].items() if k in ("write", "commit")), 1e-9)
    lines = [f"Projection to {PROJECT_TO:,} customers (from the {r['customers']:,} run: {node_rate:,.0f} rows/s for this "
             f"{CPUS_PER_NODE}-CPU node, {task_rate:,.0f} rows/s a task; the driver writes {write_rate:,.0f} rows/s)", "",
             "| nodes | CPUs | scoring hours | driver writes, hours | total hours |", "|---|---|---|---|---|"]
    for nodes in (1, 4, 16):
        scoring_h = PROJECT_TO / (node_rate * nodes) / 3600
        writes_h = PROJECT_TO / write_rate / 3600
        lines.append(f"| {nodes} | {nodes * CPUS_PER_NODE} | {scoring_h:.2f} | {writes_h:.2f} | {scoring_h + writes_h:.2f} |")
    lines += ["", "Assumptions: nodes like this one (2 CPUs, a task a CPU, the measured node rate, which includes the driver's "
              "share of the CPUs); scoring scales with nodes as long as every range reads only its own customers' rows and the "
              "sources' read bandwidth grows with the readers (object storage or a parallel filesystem); the driver writes every "
              "range into one DuckDB file and one Parquet partition serially at the measured rate (an upper bound: it overlaps "
              "the tasks); each worker's start (Ray, Feast import: ~10 s) is paid once and ignored."]
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    head = ("| customers | scored | score run s | rows/s | score peak RSS MB | bare Feast to_df s | bare peak RSS MB | ratio (score / bare) "
            "| process s (score / bare) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        bare = r.get("bare_seconds")
        if bare is not None:
            rest = f"{bare:.2f} | {r['bare_rss_mb']:,.0f} | {r['ratio']:.2f} | {r['score_process_seconds']:.1f} / {r['bare_process_seconds']:.1f} |"
        elif "bare_killed_at_rss_mb" in r:
            rest = f"killed after {r['bare_process_seconds']:.0f} s | > {r['bare_killed_at_rss_mb']:,.0f} | - | {r['score_process_seconds']:.1f} / - |"
        else:
            rest = f"- | - | - | {r['score_process_seconds']:.1f} / - |"
        lines.append(f"| {r['customers']:,} | {r['scored']:,} | {r['score_seconds']:.2f} | {r['rows_per_second']:,.0f} | {r['score_rss_mb']:,.0f} | " + rest)
    if any("ray" in r for r in results):
        lines += ["", "| customers | engine | scored | wall s | rows/s | ratio to default | driver peak RSS MB | worker RSS MB (max) | workers | tasks "
                  "| median rows/s a task | same rows |", "|" + "---|" * 12]
        for r in (r for r in results if "ray" in r):
            y = r["ray"]
            lines.append(f"| {r['customers']:,} | default | {r['scored']:,} | {r['score_seconds']:.2f} | {r['rows_per_second']:,.0f} | 1.00 "
                         f"| {r['score_rss_mb']:,.0f} | - | 1 | - | - | - |")
            lines.append(f"| {r['customers']:,} | ray | {y['scored']:,} | {y['seconds']:.2f} | {y['rows_per_second']:,.0f} "
                         f"| {y['seconds'] / r['score_seconds']:.2f} | {y['driver_rss_mb']:,.0f} | {y['worker_rss_mb_max']:,.0f} | {y['workers']} "
                         f"| {y['tasks']} | {y['task_rows_per_second_median']:,.0f} | {'yes' if y['same_rows'] else 'NO'} |")
        lines += ["", projection(results)]
    lines.append("")
    for r in results:
        stages = ", ".join(f"{k} {v:.2f}s ({r['stages_peak_rss_mb'].get(k, 0):,.0f} MB)" if k in r["stages_peak_rss_mb"] else f"{k} {v:.2f}s"
                           for k, v in r["stages_seconds"].items())
        lines.append(f"{r['customers']:,}: {stages}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, action="append", help="scale(s) to run (default 50000)")
    ap.add_argument("--as-of", default=DEFAULT_AS_OF)
    ap.add_argument("--skip-bare", action="store_true", help="do not run Feast's bare retrieval")
    ap.add_argument("--bare-rss-cap-mb", type=float, default=12_000, help="kill the bare retrieval beyond this RSS (it grows with the customer count)")
    ap.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: also run the Ray engine in the same run")
    ap.add_argument("--smoke", action="store_true", help="2,000 customers: seconds, to check the benchmark runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.customers = [SMOKE_CUSTOMERS]
    results = []
    for n in args.customers or [50_000]:
        results.append(bench(n, args.as_of, args.skip_bare, args.bare_rss_cap_mb, args.engine))
        print(table(results[-1:]), file=sys.stderr)
    print(stamp(f"bench/batch.py, as of {args.as_of}"))
    print(table(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    for r in results:
        (RESULTS / f"batch-{r['customers']}.json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
