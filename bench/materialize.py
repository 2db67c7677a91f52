"""Benchmark materialization into Redis: Feast's stock engine and skewless's, in the same run.

    .venv/bin/python bench/materialize.py --customers 100000 --customers 1000000 [--customers 10000000]
    .venv/bin/python bench/materialize.py --customers 100000 --profile-only   # where the stock path spends time

For each scale: the shared generated data (bench/generated_data.py), hard-linked into two copies of
feature_repo in bench/results/materialize-<n>/: `stock/` (`batch_engine: local` and `online_store
type: redis`, Feast's own engine and store) and `skewless/` (the repo's yaml), each applied
with the stock `feast apply`; one throwaway redis-server per scale, flushed between the paths.
Each path then runs in its own process, doing what `cd <repo> && feast materialize START END`
does (`FeatureStore(repo_path=".").materialize(START, END)`), timed around that call; the peak
RSS is that process tree's, polled with psutil (and wait4's ru_maxrss, whichever is higher).
The window holds all generated history, so every customer is written for both views (~2 rows
per customer). After the stock run a random sample of keys is kept and compared, byte for byte,
with what the skewless run wrote.

The stock path is skipped above --stock-max-customers (default 1M): it holds every row of the
window in memory several times over (12.5 GB at 1M customers here), so 10M would need ~100 GB.
A watchdog kills it beyond --stock-rss-cap-mb so it cannot push other work on this machine out
of memory. Results go to bench/results/materialize-<n>.json, one file per scale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml
from generated_data import link_data

from report import RESULTS, ROOT, stamp
sys.path.insert(0, str(ROOT))  # the project's packages before this folder's scripts of the same names
START, END = "2000-01-01T00:00:00+00:00", "2026-11-01T00:00:00+00:00"  # all generated history (it ends 2026-11-01)
SAMPLE_KEYS = 2_000
SMOKE_CUSTOMERS = 2_000
# the daily views the generated data holds (bench/generated_data.py writes no event log, so the
# account state's directory and the predictions the scores view reads are not there)
VIEWS = "customer_profile,customer_activity"

RUN = """
import json, sys, time, warnings
from datetime import datetime
warnings.simplefilter("ignore")
from feast import FeatureStore
store = FeatureStore(repo_path=".")
engine = store._get_provider().batch_engine
t = time.perf_counter()
store.materialize(datetime.fromisoformat(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), feature_views=sys.argv[3].split(","))
seconds = time.perf_counter() - t
runs = [dict(view=r.view, rows=r.rows, written=r.written, seconds=r.seconds, query_seconds=r.query_seconds) for r in getattr(engine, "runs", [])]
print(json.dumps({"engine": type(engine).__name__, "seconds": seconds, "runs": runs}))
"""

# Feast's stock materialize with each stage timed in place (the engine's own functions wrapped),
# peak RSS per stage polled: the profile in feast_plugins/materialize_engine.py's docstring.
PROFILE = """
import collections, json, sys, threading, time, warnings
from datetime import datetime
warnings.simplefilter("ignore")
import psutil, redis.client
from feast import FeatureStore
from feast.infra.compute_engines.local import nodes
from feast.infra.online_stores import redis as feast_redis
proc, secs, peak, active = psutil.Process(), collections.defaultdict(float), collections.defaultdict(float), []
def poll():
    while True:
        rss = proc.memory_info().rss / 2**20
        for s in ["total"] + list(active):
            peak[s] = max(peak[s], rss)
        time.sleep(0.05)
threading.Thread(target=poll, daemon=True).start()
def timed(label, f):
    def run(*a, **k):
        active.append(label); t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            secs[label] += time.perf_counter() - t; active.remove(label)
    return run
nodes.LocalSourceReadNode.execute = timed("1 offline read: ibis/DuckDB -> Arrow, every row in the window", nodes.LocalSourceReadNode.execute)
nodes.LocalDedupNode.execute = timed("2 latest row per key: Arrow -> pandas sort -> Arrow", nodes.LocalDedupNode.execute)
nodes._convert_arrow_to_proto = timed("3 Arrow -> protobuf, value by value", nodes._convert_arrow_to_proto)
feast_redis.RedisOnlineStore.online_write_batch = timed("4 online_write_batch", feast_redis.RedisOnlineStore.online_write_batch)
execute = redis.client.Pipeline.execute
def pipeline_execute(self, *a, **k):
    first = self.command_stack[0][0][0] if self.command_stack else "?"
    label = "4a pipelined HMGET of `_ts` (read-before-write)" if first == "HMGET" else "4b pipelined HSET"
    return timed(label, execute)(self, *a, **k)
redis.client.Pipeline.execute = pipeline_execute
store = FeatureStore(repo_path=".")
t = time.perf_counter()
store.materialize(datetime.fromisoformat(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), feature_views=sys.argv[3].split(","))
secs["total"] = time.perf_counter() - t
rest = secs["4 online_write_batch"] - secs["4a pipelined HMGET of `_ts` (read-before-write)"] - secs["4b pipelined HSET"]
secs["4c per-row Python: keys, Timestamp, SerializeToString"] = rest
print(json.dumps({k: [secs[k], peak.get(k)] for k in sorted(secs)}))
"""


def prepare(n: int) -> tuple[Path, Path]:
    """bench/results/materialize-<n>/{stock, skewless}: two repo copies over the shared data."""
    base = RESULTS / f"materialize-{n}"
    repos = []
    for name in ("stock", "skewless"):
        repo = base / name
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__", "*.db"))
        link_data(n, repo / "data")
        config = yaml.safe_load((repo / "feature_store.yaml").read_text())
        if name == "stock":
            config["batch_engine"] = "local"  # Feast's own engine
            config["online_store"]["type"] = "redis"  # and Feast's own Redis store
        else:
            assert config.get("batch_engine", {}).get("type") == "feast_plugins.materialize_engine.SkewlessRedisEngine", "feature_repo/feature_store.yaml does not name the skewless engine"
        (repo / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        repos.append(repo)
    return repos[0], repos[1]


def feast_env(endpoint) -> dict[str, str]:
    from skewless.store import REDIS_ENV

    return dict(os.environ, **{REDIS_ENV: endpoint.feast})


def feast_apply(repo: Path, endpoint) -> None:
    feast = Path(sys.executable).with_name("feast")
    r = subprocess.run([str(feast), "apply"], cwd=repo, env=feast_env(endpoint), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"feast apply in {repo} failed: {r.stderr.strip().splitlines()[-1:]}")


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str], rss_cap_mb: float | None) -> dict:
    """Run a process: wall seconds, peak RSS of its tree (MB), stdout, killed at the cap or not."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, killed, stop = [0.0], threading.Event(), threading.Event()

    def watch() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
            except psutil.NoSuchProcess:
                return
            peak[0] = max(peak[0], rss)
            if rss_cap_mb and rss > rss_cap_mb:
                killed.set()
                proc.kill()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    err_lines: list[str] = []
    err_reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    err_reader.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    watcher.join()
    err_reader.join()
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and not killed.is_set():
        raise SystemExit(f"{' '.join(cmd[:3])} in {cwd} failed ({code}): {''.join(err_lines[-3:])}")
    return {"process_seconds": time.perf_counter() - started, "peak_rss_mb": max(peak[0], usage.ru_maxrss / 1024),
            "stdout": out, "killed": killed.is_set()}


def expected_rows(data: Path) -> int:
    """Latest rows per view in the window (one per customer with a row in it): what both write."""
    import duckdb

    total = 0
    for f in ("customer_profiles.parquet", "customer_activity.parquet"):
        total += duckdb.sql(f"SELECT count(DISTINCT customer_id) FROM read_parquet('{data / f}') "
                            f"WHERE event_timestamp BETWEEN TIMESTAMPTZ '{START}' AND TIMESTAMPTZ '{END}'").fetchall()[0][0]
    return total


def sample(client, keys: list[bytes] | None = None) -> dict[bytes, dict[bytes, bytes]]:
    if keys is None:
        keys = list({client.randomkey() for _ in range(SAMPLE_KEYS)} - {None})
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.hgetall(k)
    return dict(zip(keys, pipe.execute()))


def bench(n: int, stock_max: int, rss_cap_mb: float, profile_only: bool) -> dict:
    from feast_plugins.redis_server import throwaway_redis

    stock_repo, our_repo = prepare(n)
    result: dict = {"customers": n, "window": [START, END]}
    with throwaway_redis() as endpoint:
        client = endpoint.client(timeout=600)
        env = feast_env(endpoint)
        if profile_only:
            feast_apply(stock_repo, endpoint)
            r = run_measured([sys.executable, "-c", PROFILE, START, END, VIEWS], stock_repo, env, rss_cap_mb)
            result["stock_profile"] = json.loads(r["stdout"].strip().splitlines()[-1])
            return result
        rows = expected_rows(stock_repo / "data")
        result["rows"] = rows
        stock_sample = None
        for name, repo in (("stock", stock_repo), ("skewless", our_repo)):
            if name == "stock" and n > stock_max:
                result[name] = {"skipped": f"above --stock-max-customers {stock_max:,}: holds every row of the window in memory"}
                continue
            client.flushall()
            feast_apply(repo, endpoint)
            print(f"{n:,} customers: {name} materialize ...", file=sys.stderr)
            r = run_measured([sys.executable, "-c", RUN, START, END, VIEWS], repo, env, rss_cap_mb if name == "stock" else None)
            if r["killed"]:
                result[name] = {"killed_at_rss_mb": rss_cap_mb, "process_seconds": r["process_seconds"]}
                continue
            out = json.loads(r["stdout"].strip().splitlines()[-1])
            keys = client.dbsize()
            result[name] = {"engine": out["engine"], "seconds": out["seconds"], "rows_per_second": rows / out["seconds"],
                            "keys": keys, "peak_rss_mb": r["peak_rss_mb"], "process_seconds": r["process_seconds"], "runs": out["runs"]}
            if out["runs"]:
                engine_rows = sum(v["rows"] for v in out["runs"])
                assert engine_rows == rows, f"skewless wrote {engine_rows:,} rows, expected {rows:,}"
            if name == "stock":
                stock_sample = sample(client)
            elif stock_sample is not None:
                ours = sample(client, list(stock_sample))
                result["sample_identical"] = {"keys": len(ours), "identical": ours == stock_sample}
    return result


def table(r: dict) -> str:
    if "stock_profile" in r:
        lines = [f"{r['customers']:,} customers: the stock path, stage by stage (seconds, peak RSS MB while in the stage):"]
        lines += [f"  {k:58s} {v[0]:7.2f}  {'' if v[1] is None else f'{v[1]:7,.0f}'}" for k, v in r["stock_profile"].items()]
        return "\n".join(lines)
    lines = [f"{r['customers']:,} customers, window {r['window'][0][:10]} .. {r['window'][1][:10]}: {r.get('rows', 0):,} rows",
             "| path | rows | keys | materialize s | rows/s | peak RSS MB | process s | rows/s vs stock | peak RSS vs stock |",
             "|---|---|---|---|---|---|---|---|---|"]
    stock = r.get("stock", {})
    for name in ("stock", "skewless"):
        p = r.get(name, {})
        if "skipped" in p:
            lines.append(f"| {name} | - | - | skipped: {p['skipped']} | | | | | |")
            continue
        if "killed_at_rss_mb" in p:
            lines.append(f"| {name} | - | - | killed at {p['killed_at_rss_mb']:,.0f} MB after {p['process_seconds']:.0f} s | | | | | |")
            continue
        speed = rss = "-"
        if name != "stock" and "seconds" in stock:
            speed = f"{p['rows_per_second'] / stock['rows_per_second']:.1f}x"
            rss = f"{p['peak_rss_mb'] / stock['peak_rss_mb']:.2f}"
        lines.append(f"| {name} | {r['rows']:,} | {p['keys']:,} | {p['seconds']:.1f} | {p['rows_per_second']:,.0f} | "
                     f"{p['peak_rss_mb']:,.0f} | {p['process_seconds']:.1f} | {speed} | {rss} |")
    if "sample_identical" in r:
        s = r["sample_identical"]
        lines.append(f"byte-identical to stock on a random sample of {s['keys']:,} keys: {'yes' if s['identical'] else 'NO'}")
    for run in r.get("skewless", {}).get("runs", []):
        lines.append(f"  skewless {run['view']}: {run['rows']:,} rows in {run['seconds']:.1f} s (choosing the latest rows: {run['query_seconds']:.1f} s)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, action="append", help="scale(s) to run (default 100000 and 1000000)")
    ap.add_argument("--stock-max-customers", type=int, default=1_000_000, help="skip Feast's stock engine above this scale")
    ap.add_argument("--stock-rss-cap-mb", type=float, default=16_000, help="kill the stock run beyond this RSS")
    ap.add_argument("--profile-only", action="store_true", help="only profile the stock path, stage by stage")
    ap.add_argument("--smoke", action="store_true", help="2,000 customers: seconds, to check the benchmark runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.customers = [SMOKE_CUSTOMERS]
    results = []
    for n in args.customers or [100_000, 1_000_000]:
        results.append(bench(n, args.stock_max_customers, args.stock_rss_cap_mb, args.profile_only))
        print(stamp(f"bench/materialize.py, window {START[:10]} .. {END[:10]}"))
        print(table(results[-1]) + "\n", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for r in results:
        name = f"materialize-profile-{r['customers']}" if args.profile_only else f"materialize-{r['customers']}"
        (RESULTS / f"{name}.json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
