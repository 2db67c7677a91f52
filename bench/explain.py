"""What an explanation costs: per request in process, and for a batch run, beside the same work without.

    .venv/bin/python bench/explain.py --customers 1000000 [--smoke]

Over the shared generated data (a repo copy in bench/results/explain-<n>/, applied, a bundle
trained on 200k labels, reused):

  - in process, the features of 1 and of 100 customers at T: `score()` alone, and `score()` +
    `explain(top=3)` (skewless/explain.py: XGBoost's `pred_contribs`), CPU time per call,
    median of rounds; the extra is what `?explain=true` adds to a request's model step;
  - `skewless score --as-of T` three times, each its own process: without reasons, with the top
    3 reasons of the High and Medium segments, and with those of every customer scored; wall
    time and the ratio to the run without.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

from measure import run_measured
from retrieval import prepare_repo_copy

from report import RESULTS, ROOT, stamp

sys.path.insert(0, str(ROOT))  # the project's packages before this folder's scripts of the same names
SMOKE_CUSTOMERS = 2_000
AS_OF = "2026-10-31T12:00:00+00:00"  # the generated data ends 2026-11-01
ROUNDS = 7


def prepare(n: int):
    repo = prepare_repo_copy(RESULTS / f"explain-{n}", n)
    models = repo.parent / "models"
    if not (models / "churn" / "latest" / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "skewless", "train", "--repo", str(repo), "--model-dir", str(models), "--max-rows", "200000"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return repo, models


def per_request(repo, models) -> dict:
    """CPU ms per call of score() and of score() + explain(top=3), for 1 and 100 customers."""
    from datetime import datetime

    import pandas as pd

    from batch.retrieval import active_customers, resolve, stream_features
    from skewless.bundle import load_bundle
    from skewless.explain import explain
    from skewless.score import score
    from skewless.store import open_store

    store = open_store(repo)
    bundle = load_bundle("latest", models, store=store)
    at = datetime.fromisoformat(AS_OF)
    ids = active_customers(store, at)[:100]
    frame = pd.concat(stream_features(store, resolve(store, bundle.feature_service), ids, at)).reset_index(drop=True)
    out = {}
    for rows in (1, 100):
        part = frame.head(rows)
        columns = {c: part[c].tolist() for c in part.columns}  # what the service scores: columns as lists
        for label, work in (("score", lambda: score(bundle, columns)), ("score+explain", lambda: (score(bundle, columns), explain(bundle, columns, 3)))):
            work()  # warm
            samples = []
            for _ in range(ROUNDS):
                t = time.process_time()
                for _ in range(20):
                    work()
                samples.append((time.process_time() - t) / 20 * 1000)
            out[f"{label}_{rows}_ms"] = sorted(samples)[len(samples) // 2]
    return out


def batch_runs(repo, models) -> dict:
    out = {}
    cases = {"none": [], "high_medium": ["--explain-top", "3", "--explain-segment", "High", "--explain-segment", "Medium"],
             "everyone": ["--explain-top", "3"]}
    for name, extra in cases.items():
        out_dir = repo.parent / f"out-{name}"
        shutil.rmtree(out_dir, ignore_errors=True)
        summary = out_dir / "summary.json"
        cmd = [sys.executable, "-m", "skewless", "score", "--as-of", AS_OF, "--repo", str(repo), "--model-dir", str(models),
               "--out-dir", str(out_dir), "--summary-json", str(summary), "--top", "0", *extra]
        wall, rss, _, _ = run_measured(cmd)
        s = json.loads(summary.read_text())
        out[name] = {"seconds": s["wall_seconds"], "customers": s["customers"], "explained": s.get("explained", 0), "peak_rss_mb": rss}
    return out


def table(n: int, req: dict, runs: dict) -> str:
    lines = [stamp("bench/explain.py"), "",
             "| what | without | with explanations (top 3) | extra |", "|---|---|---|---|"]
    for rows in (1, 100):
        a, b = req[f"score_{rows}_ms"], req[f"score+explain_{rows}_ms"]
        lines.append(f"| {rows} customer(s) in process, CPU ms a call | {a:.3f} | {b:.3f} | {b - a:.3f} ms ({(b - a) / rows:.3f} a row) |")
    base = runs["none"]
    for name, label in (("high_medium", "High + Medium explained"), ("everyone", "every customer explained")):
        r = runs[name]
        lines.append(f"| `skewless score` at {n:,} ({base['customers']:,} scored), {label} ({r['explained']:,}) | {base['seconds']:.2f} s | "
                     f"{r['seconds']:.2f} s | {r['seconds'] / base['seconds']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_CUSTOMERS:,} customers, to check the bench runs")
    args = parser.parse_args()
    n = SMOKE_CUSTOMERS if args.smoke else args.customers
    repo, models = prepare(n)
    req = per_request(repo, models)
    runs = batch_runs(repo, models)
    (RESULTS / f"explain-{n}.json").write_text(json.dumps({"per_request": req, "batch": runs}, indent=2))
    print(table(n, req, runs))
    if args.smoke:
        shutil.rmtree(RESULTS / f"explain-{SMOKE_CUSTOMERS}", ignore_errors=True)


if __name__ == "__main__":
    main()
