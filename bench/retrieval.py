"""Point-in-time retrieval: the ASOF offline store against Feast 0.67's own DuckDB store, same run.

    .venv/bin/python bench/retrieval.py --customers 1000000 [--customers 50000] [--smoke]

For each scale, over the shared generated data (bench/generated_data.py), two repo copies in
bench/results/retrieval-<n>/ differing only in `offline_store: type:` (ours, Feast's `duckdb`),
each applied. Then, each in its own process (peak RSS of that process from wait4):

  - batch: `get_historical_features(features=<churn_v1>, filter_by_created_timestamp=True).to_df()`
    for every customer at one as-of time T;
  - training: the same for the label rows of up to 300k labels (many times per customer), what
    `skewless train` retrieves;
  - streamed (the plug-in only): the batch case read with `job.to_record_batches()` and
    dropped batch by batch, the shape of a caller that need not hold the result: its peak RSS is
    the memory bound (the DuckDB limit plus one batch), not the row count.

Each process reports the wall time of `to_df()` and, for the plug-in, where it went: the join,
the on-demand view, the conversion to pandas. Results: bench/results/retrieval-<n>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

from pathlib import Path

from generated_data import link_data
from measure import run_measured

from report import RESULTS, ROOT, stamp

SMOKE_CUSTOMERS = 2_000
AS_OF = "2026-10-31T12:00:00+00:00"  # the generated data ends 2026-11-01
TRAINING_ROWS = 300_000

CHILD = """
import json, sys, time
import pandas as pd
from skewless.store import open_store
repo, kind, as_of, rows = sys.argv[1], sys.argv[2], pd.Timestamp(sys.argv[3]), int(sys.argv[4])
store = open_store(repo)
if kind in ("batch", "streamed"):
    ids = pd.read_parquet(f"{repo}/data/customer_profiles.parquet", columns=["customer_id"])["customer_id"].unique()
    entity = pd.DataFrame({"customer_id": ids, "event_timestamp": as_of, "as_of": as_of})
else:
    labels = pd.read_parquet(f"{repo}/data/churn_labels.parquet", columns=["customer_id", "event_timestamp"])
    entity = labels.sample(n=min(rows, len(labels)), random_state=0).reset_index(drop=True)
    entity["as_of"] = entity["event_timestamp"]
t = time.perf_counter()
job = store.get_historical_features(entity_df=entity, features=store.get_feature_service("churn_v1"), filter_by_created_timestamp=True)
rows = sum(b.num_rows for b in job.to_record_batches()) if kind == "streamed" else len(job.to_df())
out = {"rows": rows, "seconds": time.perf_counter() - t}
out.update({f"{k}_seconds": v for k, v in getattr(job, "seconds", {}).items()})
print(json.dumps(out))
"""


def prepare_repo_copy(base: Path, n: int) -> Path:
    """feature_repo copied to base/feature_repo over the generated data for n customers, applied (reused)."""
    repo = base / "feature_repo"
    if not (repo / "data" / "registry.db").exists():
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__", "*.db"))
        link_data(n, repo / "data")
        subprocess.run([sys.executable, "-m", "skewless", "apply", "--repo", str(repo)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return repo


def prepare(n: int) -> dict[str, str]:
    """Two applied repo copies over the same data: {"asof": path, "feast": path}."""
    repos = {}
    for kind in ("asof", "feast"):
        repo = prepare_repo_copy(RESULTS / f"retrieval-{n}" / kind, n)
        yaml, ours = repo / "feature_store.yaml", "  type: feast_plugins.asof_offline_store.AsofDuckDBOfflineStore\n"
        if kind == "feast" and ours in yaml.read_text():
            yaml.write_text(yaml.read_text().replace(ours, "  type: duckdb\n").replace("  memory_limit: 768MB\n", ""))
            subprocess.run([sys.executable, "-m", "skewless", "apply", "--repo", str(repo)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        repos[kind] = str(repo)
    return repos


def bench(n: int) -> dict:
    repos = prepare(n)
    result: dict = {"customers": n}
    for case in ("batch", "training"):
        for kind, repo in repos.items():
            wall, rss, out, _ = run_measured([sys.executable, "-c", CHILD, repo, case, AS_OF, str(TRAINING_ROWS)])
            result[f"{case}_{kind}"] = json.loads(out.strip().splitlines()[-1]) | {"process_seconds": wall, "peak_rss_mb": rss}
        ours, feast = result[f"{case}_asof"], result[f"{case}_feast"]
        assert ours["rows"] == feast["rows"], (ours["rows"], feast["rows"])
        result[f"{case}_speedup"] = feast["seconds"] / ours["seconds"]
        result[f"{case}_rss_ratio"] = ours["peak_rss_mb"] / feast["peak_rss_mb"]
    wall, rss, out, _ = run_measured([sys.executable, "-c", CHILD, repos["asof"], "streamed", AS_OF, "0"])
    result["streamed_asof"] = json.loads(out.strip().splitlines()[-1]) | {"process_seconds": wall, "peak_rss_mb": rss}
    (RESULTS / f"retrieval-{n}.json").write_text(json.dumps(result, indent=2))
    return result


def table(results: list[dict]) -> str:
    lines = [stamp("bench/retrieval.py"), "",
             "| customers | case | rows | Feast `duckdb` s | ASOF store s (join / on-demand / rest) | speed-up | peak RSS MB Feast / ASOF |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for case in ("batch", "training"):
            ours, feast = r[f"{case}_asof"], r[f"{case}_feast"]
            rest = ours["seconds"] - ours.get("join_seconds", 0) - ours.get("on_demand_seconds", 0)
            lines.append(f"| {r['customers']:,} | {case} | {ours['rows']:,} | {feast['seconds']:.2f} | {ours['seconds']:.2f} "
                         f"({ours.get('join_seconds', 0):.2f} / {ours.get('on_demand_seconds', 0):.2f} / {rest:.2f}) | "
                         f"{r[f'{case}_speedup']:.1f}x | {feast['peak_rss_mb']:.0f} / {ours['peak_rss_mb']:.0f} |")
        streamed = r["streamed_asof"]
        lines.append(f"| {r['customers']:,} | batch, streamed | {streamed['rows']:,} | | {streamed['seconds']:.2f} | | / {streamed['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, action="append", help="scale (repeatable; default 1,000,000)")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_CUSTOMERS:,} customers, to check the bench runs")
    args = parser.parse_args()
    scales = [SMOKE_CUSTOMERS] if args.smoke else (args.customers or [1_000_000])
    results = [bench(n) for n in scales]
    print(table(results))
    if args.smoke:
        shutil.rmtree(RESULTS / f"retrieval-{SMOKE_CUSTOMERS}", ignore_errors=True)


if __name__ == "__main__":
    main()
