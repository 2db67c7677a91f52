"""Benchmark the online path: skewless /predict and /predict/batch beside stock `feast serve`.

    uv run python bench/online.py [--customers 50000] [--seconds 10] [--workers 2]

Prepares a copy of feature_repo with generated data ending today (bench/results/online-<n>/),
applies, trains, starts a private redis-server and materializes it, then starts the service
(uvicorn, --workers) and `feast serve` on the same Redis. An open-loop load generator (its own
process, asyncio, keep-alive connections) sends requests at fixed rates: request i is due at
t0 + i/rate whatever happened before, and its latency is measured from that due time, so
queueing shows. Prints p50/p95/p99, errors and the achieved rate per scenario.
Only loopback addresses; every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------- load generator (child process)
async def _conn_worker(port: int, queue: asyncio.Queue, lat: list, errors: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while True:
        item = await queue.get()
        if item is None:
            writer.close()
            return
        due, payload = item
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - due)
            if status >= 400:  # every ID in the sample has features: any 4xx/5xx is an error
                errors.append(status)
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(repr(exc))
            reader, writer = await asyncio.open_connection("127.0.0.1", port)


async def _drive(port: int, payloads: list[bytes], rate: float, seconds: float, connections: int) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    lat: list[float] = []
    errors: list = []
    workers = [asyncio.create_task(_conn_worker(port, queue, lat, errors)) for _ in range(connections)]
    n = int(rate * seconds)
    t0 = time.perf_counter() + 0.2
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, payloads[i % len(payloads)]))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"sent": n, "done": len(lat), "errors": len(errors), "achieved_rps": len(lat) / elapsed,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99))}


def load_main(spec: str) -> None:
    s = json.loads(spec)
    payloads = [p.encode("latin-1") for p in s["payloads"]]
    print(json.dumps(asyncio.run(_drive(s["port"], payloads, s["rate"], s["seconds"], s["connections"]))))


def http_post(path: str, body: dict) -> str:
    data = json.dumps(body)
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n{data}"


def run_load(port: int, payloads: list[str], rate: float, seconds: float, connections: int = 32) -> dict:
    spec = json.dumps({"port": port, "payloads": payloads, "rate": rate, "seconds": seconds, "connections": connections})
    out = subprocess.run([sys.executable, __file__, "--load"], input=spec, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- orchestration
def prepare(n: int) -> tuple[Path, Path]:
    base = RESULTS / f"online-{n}"
    repo, models = base / "feature_repo", base / "models"
    if (models / "churn" / "latest").exists():
        return repo, models
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    sk = [sys.executable, "-m", "training"]
    subprocess.run(sk + ["generate", "--customers", str(n), "--out", str(repo / "data")], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    subprocess.run(sk + ["apply", "--repo", str(repo)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    subprocess.run(sk + ["train", "--repo", str(repo), "--model-dir", str(models), "--max-rows", "200000"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return repo, models


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not become ready")


def main() -> None:
    if sys.argv[1:] == ["--load"]:
        return load_main(sys.stdin.read())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from batch.retrieval import active_customers
    from online.materialize import materialize
    from online.redis_server import free_port, throwaway_redis
    from training.store import REDIS_ENV, open_store

    repo, models = prepare(args.customers)
    procs: list[subprocess.Popen] = []
    with throwaway_redis() as redis_ep:
        os.environ[REDIS_ENV] = redis_ep.feast
        store = open_store(repo)
        materialize(store, datetime.now(timezone.utc), full=True)
        ids = active_customers(store, datetime.now(timezone.utc)).tolist()
        random.seed(1)
        sample = random.sample(ids, 2000)
        env = dict(os.environ, SKEWLESS_REPO_PATH=str(repo), SKEWLESS_MODEL_DIR=str(models), SKEWLESS_FEATURE_LOG_DIR=str(repo.parent / "log"))
        app_port, feast_port = free_port(), free_port()
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "online.app:create_app", "--factory", "--port", str(app_port),
                                           "--workers", str(args.workers), "--log-level", "warning", "--no-access-log",
                                           "--loop", "uvloop", "--http", "httptools"], env=env, cwd=ROOT, start_new_session=True))
            feast_cli = Path(sys.executable).with_name("feast")
            procs.append(subprocess.Popen([str(feast_cli), "serve", "-h", "127.0.0.1", "-p", str(feast_port), "--no-access-log", "-w", str(args.workers)],
                                          env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            wait_ready(f"http://127.0.0.1:{app_port}/ready", procs[0])
            wait_ready(f"http://127.0.0.1:{feast_port}/health", procs[1])
            single = [http_post("/predict", {"customer_id": c}) for c in sample]
            batch = [http_post("/predict/batch", {"customer_ids": sample[i:i + 100]}) for i in range(0, 2000, 100)]
            # feast serve's JSON API passes `as_of` to the on-demand view as a plain int, which a
            # UnixTimestamp input cannot take, so it is asked for the raw views of churn_v1 only
            # (the same Redis reads; skewless additionally runs the transform and the model).
            from online.features import OnlineFeatures

            raw_refs = OnlineFeatures(store, "churn_v1").refs
            feast_req = [http_post("/get-online-features", {"features": raw_refs, "entities": {"customer_id": [c]}}) for c in sample]
            import httpx

            probe = httpx.post(f"http://127.0.0.1:{feast_port}/get-online-features", content=feast_req[0].split("\r\n\r\n", 1)[1],
                               headers={"Content-Type": "application/json"})
            print(f"feast serve answers {probe.status_code}: {probe.text[:300]}", flush=True)
            for payloads, port in ((single, app_port), (feast_req, feast_port)):
                run_load(port, payloads, 50, 2)  # warm up
            health = ["GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"]
            scenarios = [
                ("skewless GET /health (HTTP floor)", app_port, health, 200),
                ("skewless POST /predict", app_port, single, 200),
                ("skewless POST /predict", app_port, single, 1000),
                ("skewless POST /predict/batch (100 IDs)", app_port, batch, 20),
                ("feast serve /get-online-features (views)", feast_port, feast_req, 200),
                ("feast serve /get-online-features (views)", feast_port, feast_req, 1000),
            ]
            results = []
            for name, port, payloads, rate in scenarios:
                r = run_load(port, payloads, rate, args.seconds)
                results.append({"scenario": name, "rate": rate, **r})
                print(f"{name:42} {rate:>5} rps: p50 {r['p50']:.2f} ms  p95 {r['p95']:.2f}  p99 {r['p99']:.2f}  errors {r['errors']}  achieved {r['achieved_rps']:.0f}/s", flush=True)
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(p.pid, signal.SIGKILL)
    print(f"\n{'scenario':42} {'target rps':>10} {'achieved':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results:
        print(f"{r['scenario']:42} {r['rate']:>10} {r['achieved_rps']:>9.0f} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['p99']:>8.2f} {r['errors']:>7}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "online.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
