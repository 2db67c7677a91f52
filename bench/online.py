"""Benchmark the online path: skewless /predict, /predict/batch and /scores beside stock `feast serve`.

    .venv/bin/python bench/online.py [--customers 50000] [--seconds 10] [--repeat 3] [--workers 2] [--no-feast] [--only TEXT]

1. Prepares bench/results/online-<n>/: a copy of feature_repo, data generated to end today,
   applied with the stock `feast apply`, a model trained on it, and a batch run scored with it
   into the churn_scores view's directory (what GET /scores serves). Reused while its data
   still ends today.
2. Starts a private redis-server on a loopback port and fills it with Feast's materialize
   (activity from 120 days back, as a long-running Redis holds rows that have since expired).
3. Starts the service with the real command (`skewless serve --workers N`), the same with an
   API key required, the same with dynamic batching off (SKEWLESS_BATCH_MAX_IDS=1), the same with
   /predict's fast path off (SKEWLESS_PREDICT_FAST_PATH=false: every request through FastAPI's
   route), and stock `feast serve -w N`, on the same repo and Redis.
4. Drives each with an open-loop load generator in its own process (`OpenLoop`): request i is
   sent at t0 + i/rate whatever happened before, on an idle keep-alive connection (a new one
   when none is idle, up to 64), and its latency is measured from that due time, so queueing
   shows. A sender thread sleeps to each due time and a receiver thread waits in epoll for
   answers; threads and `time.sleep` rather than asyncio, whose timers wake up to 1 ms late.
5. Runs every scenario `--repeat` times, round by round (a noisy minute on this shared machine
   then spreads over all scenarios instead of sinking one), and prints per scenario the median
   round's p50/p95/p99 with each round's p50 and p99 beside it, errors, achieved rate, the
   server's CPU per request and the service's own split of the time (from its /metrics); writes
   every round to bench/results/online.json. The rollout scenario also gives, per round, the
   slowest request of the seconds that hold a worker's swap, of those after the move to a broken
   bundle, and of the quiet seconds: what the rollout adds, set apart from the machine's noise.

Only loopback addresses. Every process it starts runs in its own process group and is stopped
at the end (SIGTERM, then SIGKILL after 20 s). Each scenario is bounded: its schedule plus at
most 15 s to drain.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from report import RESULTS, ROOT, stamp
sys.path.insert(0, str(ROOT))  # the project's packages before this folder's scripts of the same names

CONNECTIONS = 64
SLOW_S = 0.002  # answers slower than this are kept with their due time (the rollout windows)
DRAIN_S = 15.0
HISTORY = timedelta(days=120)  # how far back Redis is filled, past the activity view's 30-day TTL


# ---------------------------------------------------------------- load generator (child process)
class OpenLoop:
    """An open-loop HTTP/1.1 load generator: request i is due at t0 + i/rate, whatever came before.

    Two threads, so that neither waiting for the next due time nor waiting for answers delays
    the other: the sender sleeps until a request is due (nanosleep with the timer slack set to
    1 ns, so it wakes within ~10 us) and sends it on an idle keep-alive connection, opening one
    when none is idle (up to `max_connections`; past that the request waits for the first
    connection to free up, and that wait counts); the receiver blocks in epoll on every
    connection and stamps each answer the moment it arrives. Latency is answer time minus due
    time, so queueing anywhere (in the server, in the kernel, in this generator) shows. The
    sender's own lateness is reported separately (`send_lag`), so a generator that cannot keep
    up shows as such instead of as server latency.
    """

    def __init__(self, port: int, payloads: list[bytes], max_connections: int, track_versions: bool = False):
        import collections
        import select

        self.port, self.payloads, self.max_connections = port, payloads, max_connections
        self.track_versions = track_versions  # read each answer's model_version (the rollout scenario only)
        self.epoll = select.epoll()
        self.lock = threading.Lock()
        self.idle: collections.deque = collections.deque()  # sockets with nothing in flight
        self.waiting: collections.deque = collections.deque()  # (due, payload) with no connection free
        self.inflight: dict[int, tuple[socket.socket, float, bytearray]] = {}  # fd -> (sock, due, buffer)
        self.opened = 0
        self.latencies: list[float] = []
        self.slow: list[tuple[float, float]] = []  # (due, latency) of answers over SLOW_S: where the tail sits in time
        self.versions: dict[str, list[float]] = {}  # model_version in the answers -> [first due, last due]
        self.lags: list[float] = []
        self.errors: list[str] = []
        self.done = 0  # requests answered or failed
        self.stop = False

    def _send(self, sock: socket.socket, due: float, payload: bytes) -> None:
        self.inflight[sock.fileno()] = (sock, due, bytearray())
        try:
            sock.sendall(payload)
        except OSError as exc:
            self._fail(sock, type(exc).__name__)

    def _fail(self, sock: socket.socket, why: str) -> None:
        """A request lost with its connection: counted as an error, the connection closed."""
        self.inflight.pop(sock.fileno(), None)
        self.errors.append(why)
        self.done += 1
        try:
            self.epoll.unregister(sock.fileno())
        except (OSError, ValueError):
            pass
        sock.close()
        self.opened -= 1

    def submit(self, due: float, payload: bytes) -> None:
        with self.lock:
            self.lags.append(time.perf_counter() - due)
            if self.idle:
                return self._send(self.idle.pop(), due, payload)
            if self.opened >= self.max_connections:
                return self.waiting.append((due, payload))
            self.opened += 1
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError as exc:
            with self.lock:
                self.opened -= 1
                self.errors.append(type(exc).__name__)
                self.done += 1
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            self._send(sock, due, payload)
            self.epoll.register(sock.fileno(), 1)  # EPOLLIN

    def receive(self) -> None:
        while not self.stop:
            events = self.epoll.poll(0.05)
            now = time.perf_counter()
            for fd, _ in events:
                with self.lock:
                    entry = self.inflight.get(fd)
                    if entry is None:  # an idle connection the server closed (keep-alive timeout)
                        sock = next((s for s in self.idle if s.fileno() == fd), None)
                        if sock is not None:
                            self.idle.remove(sock)
                            self.epoll.unregister(fd)
                            sock.close()
                            self.opened -= 1
                        continue
                    sock, due, buf = entry
                    try:
                        chunk = sock.recv(65536)
                    except OSError as exc:
                        self._fail(sock, type(exc).__name__)
                        continue
                    if not chunk:
                        self._fail(sock, "server closed the connection")
                        continue
                    buf += chunk
                    status = _complete_response(buf)
                    if status is None:
                        continue  # more to come
                    del self.inflight[fd]
                    self.done += 1
                    self.latencies.append(now - due)
                    if now - due > SLOW_S:
                        self.slow.append((due, now - due))
                    version = _model_version(buf) if self.track_versions else None
                    if version is not None:
                        self.versions.setdefault(version, [due, due])[1] = due
                    if status >= 400:
                        self.errors.append(f"HTTP {status}")
                    if self.waiting:
                        self._send(sock, *self.waiting.popleft())
                    else:
                        self.idle.append(sock)


def _complete_response(buf: bytearray) -> int | None:
    """The status of the HTTP/1.1 response in `buf` once it is complete (Content-Length framed)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", buf[:end])
    if len(buf) < end + 4 + (int(m.group(1)) if m else 0):
        return None
    return int(buf[9:12])


def _model_version(buf: bytearray) -> str | None:
    """The `model_version` an answer names, if any (a /predict answer does)."""
    m = re.search(rb'"model_version":"([^"]+)"', buf)
    return m.group(1).decode() if m else None


def _tight_timer_slack() -> None:
    """Let nanosleep wake on time: Linux's default timer slack (50 us) would make every send late."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 ns
    except (OSError, AttributeError):
        pass


def load_main(spec: dict) -> dict:
    """Send spec['rate'] requests/s for spec['seconds'] to spec['port']; latency from due times."""
    import resource

    _tight_timer_slack()
    payloads = [p.encode("latin-1") for p in spec["payloads"]]
    rate, n = spec["rate"], int(spec["rate"] * spec["seconds"])
    gen = OpenLoop(spec["port"], payloads, spec.get("connections", CONNECTIONS), spec.get("track_versions", False))
    receiver = threading.Thread(target=gen.receive, daemon=True)
    receiver.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        gen.submit(due, payloads[i % len(payloads)])
    deadline = time.perf_counter() + DRAIN_S
    while gen.done < n and time.perf_counter() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    gen.stop = True
    receiver.join()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    lats, lags = sorted(gen.latencies), sorted(gen.lags)
    answered = len(lats)
    http_errors = sum(1 for e in gen.errors if e.startswith("HTTP"))

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000 if values else float("nan")

    unanswered = n - gen.done
    return {
        "sent": n, "answered": answered, "ok": answered - http_errors, "errors": len(gen.errors) + unanswered,
        "error_kinds": sorted(set(gen.errors)) + (["no answer within the drain time"] if unanswered else []),
        "achieved_rps": (answered - http_errors) / elapsed, "p50": pct(lats, 50), "p95": pct(lats, 95), "p99": pct(lats, 99),
        "max": pct(lats, 100), "send_lag_p99": pct(lags, 99), "connections": gen.opened,
        "slow": gen.slow, "versions": gen.versions, "t0": t0,
        "loadgen_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }


def http_post(path: str, body: dict, key: str | None = None) -> str:
    data = json.dumps(body)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n{data}"


BENCH_KEY = "sk_bench-key-not-a-secret"


class RolloutDuring(threading.Thread):
    """While a scenario runs: `latest` moves to a copy of the bundle at 1/3, to a broken copy at
    2/3 (its model file changed after training), and back at the end; the service must swap the
    first in and refuse the second without an error or a slow request. `moves` holds when each
    move happened (time.perf_counter: CLOCK_MONOTONIC, the same clock as the load generator's)."""

    def __init__(self, models: Path, seconds: float):
        super().__init__(daemon=True)
        from online.settings import Settings
        from skewless.bundle import point_latest

        self.poll_s = Settings.model_fields["model_poll_s"].default  # how long a worker may take to notice a move
        self.root, self.seconds, self.point_latest = models / "churn", seconds, point_latest
        self.original = (self.root / "latest").resolve().name
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.new, self.broken = f"{stamp}-rollout", f"{stamp}-broken"
        self._copy(self.new, False)  # before the load starts: copying is this process's work, not the service's
        self._copy(self.broken, True)
        self.moves: dict[str, float] = {}

    def _copy(self, version: str, broken: bool) -> None:
        root, original = self.root, self.original
        shutil.rmtree(root / version, ignore_errors=True)
        shutil.copytree(root / original, root / version, ignore=shutil.ignore_patterns("training_set*"))
        manifest = json.loads((root / version / "manifest.json").read_text())
        (root / version / "manifest.json").write_text(json.dumps(manifest | {"version": version}))
        if broken:
            with open(root / version / "model.ubj", "ab") as f:
                f.write(b"tampered")

    def run(self) -> None:
        time.sleep(self.seconds / 3)
        self.moves["new"] = time.perf_counter()
        self.point_latest(self.root, self.new)
        time.sleep(self.seconds / 3)
        self.moves["broken"] = time.perf_counter()
        self.point_latest(self.root, self.broken)
        time.sleep(self.seconds / 3 + 1)
        self.point_latest(self.root, self.original)

    def windows(self, r: dict) -> dict:
        """The slowest request (ms) of each 1 s of the run, by due time, sorted into seconds that
        hold a worker's swap (0.5 s either side of the first answer from the new version and of
        the last from the old one: one per worker), seconds after the move to the broken bundle
        (until one watch interval has passed) and quiet seconds: what the rollout adds, set apart
        from what the machine does anyway in the same run."""
        t0, new_first = r["t0"], r["versions"].get(self.new, [None])[0]
        old_last = r["versions"].get(self.original, [self.moves["new"]] * 2)[1]
        swaps = [t for t in (new_first, old_last) if t is not None]
        n_bins = int(self.seconds)
        worst = [SLOW_S * 1000] * n_bins
        for due, lat in r["slow"]:
            i = int(due - t0)
            if 0 <= i < n_bins:
                worst[i] = max(worst[i], lat * 1000)
        swap_bins = {int(t - t0 + d) for t in swaps for d in (-0.5, 0.5)}
        broken = self.moves["broken"] - t0
        broken_bins = set(range(int(broken), int(broken + self.poll_s) + 1)) - swap_bins
        quiet = [w for i, w in enumerate(worst) if i not in swap_bins | broken_bins]
        return {
            "swap max ms": max((worst[i] for i in swap_bins if 0 <= i < n_bins), default=float("nan")),
            "broken max ms": max((worst[i] for i in broken_bins if 0 <= i < n_bins), default=float("nan")),
            "quiet median ms": statistics.median(quiet) if quiet else float("nan"),
            "quiet max ms": max(quiet, default=float("nan")),
            "swap s": (old_last - new_first) if new_first is not None else float("nan"),
            "answered by new": new_first is not None,
        }


def http_get(path: str) -> str:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def run_load(port: int, payloads: list[str], rate: float, seconds: float, track_versions: bool = False) -> dict:
    spec = json.dumps({"port": port, "payloads": payloads, "rate": rate, "seconds": seconds, "track_versions": track_versions})
    out = subprocess.run([sys.executable, __file__, "--load"], input=spec, capture_output=True, text=True,
                         timeout=seconds + DRAIN_S + 60)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- preparation
def prepare(n: int, redis_feast: str) -> tuple[Path, Path]:
    """feature_repo copy (TTL store in the yaml), data ending today, applied, a model trained."""
    from synthetic.generate import GenerateConfig, generate
    from skewless.store import REDIS_ENV, open_store
    from training.train import train

    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    base = RESULTS / f"online-{n}"
    repo, models, marker = base / "feature_repo", base / "models", base / "prepared.json"
    if marker.exists() and json.loads(marker.read_text()).get("end") == today.isoformat():
        return repo, models
    print(f"preparing {base} ({n:,} customers, data ending {today:%Y-%m-%d})", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__", "*.db"))
    generate(GenerateConfig(customers=n, end=today), repo / "data")
    env = dict(os.environ, **{REDIS_ENV: redis_feast})
    subprocess.run([str(Path(sys.executable).with_name("feast")), "apply"], cwd=repo, env=env, check=True, capture_output=True)
    store = open_store(repo)
    result = train(store, repo, models, max_rows=200_000)
    from batch.job import run_batch
    from batch.publish import scores_dir

    # the full run GET /scores serves: written where the churn_scores view reads, loaded by fill_redis
    run_batch(store, result.bundle, datetime.now(timezone.utc).replace(microsecond=0), None, base / "predictions.duckdb", scores_dir(store).parent)
    marker.write_text(json.dumps({"end": today.isoformat(), "customers": n}))
    return repo, models


def fill_redis(store, end: datetime) -> float:
    """Load every online view into Redis up to `end` with Feast's own materialize.

    Kept to one function so `skewless materialize` (feast_plugins/materialize.py) can replace it.
    """
    t = time.perf_counter()
    for view in store.list_feature_views():
        if view.online:
            ttl = view.ttl or timedelta(days=3650)
            store.materialize(start_date=end - max(ttl, HISTORY), end_date=end, feature_views=[view.name])
    return time.perf_counter() - t


# ---------------------------------------------------------------- processes and metrics
def start(cmd: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not become ready in {timeout:.0f}s; see {log}")


def cpu_seconds(proc: subprocess.Popen) -> float:
    """User+system CPU of a server process and all its children (the workers) so far."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def scrape(port: int) -> dict[str, float]:
    """The service's skewless_* samples (sums and counts) from /metrics."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith("skewless_") and ("_sum" in line or "_count" in line):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _each(rounds: list[dict], key: str) -> str:
    return " / ".join(f"{r[key]:.2f}" for r in rounds)


def _by_scenario(results: list[dict]) -> dict[tuple[str, float], list[dict]]:
    out: dict[tuple[str, float], list[dict]] = {}
    for r in results:
        out.setdefault((r["scenario"], r["rate"]), []).append(r)
    return out


def stage_split(before: dict, after: dict, route: str) -> dict[str, float]:
    """Mean ms per request of each stage the service measures, between two scrapes.

    A stage runs once per scoring call, and with dynamic batching one call serves several
    requests: each stage's total time is divided by the requests answered, not by its calls.
    """
    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    labels = f'{{method="POST",route="{route}",status="200"}}'
    requests = delta(f"skewless_request_seconds_count{labels}")

    def per_request(sum_sample: str) -> float:
        return delta(sum_sample) / requests * 1000 if requests else float("nan")

    batches = delta("skewless_predict_batch_size_count")
    return {
        "server (ASGI, in the service)": per_request(f"skewless_request_seconds_sum{labels}"),
        "feature read (Feast + Redis + TTL)": per_request("skewless_feature_lookup_seconds_sum"),
        "on-demand transform": per_request("skewless_on_demand_seconds_sum"),
        "model (score)": per_request("skewless_model_seconds_sum"),
        "requests per scoring call (batch size)": delta("skewless_predict_batch_size_sum") / batches if route == "/predict" and batches else 1.0,
    }


# ---------------------------------------------------------------- main
def main() -> None:
    if sys.argv[1:] == ["--load"]:
        print(json.dumps(load_main(json.loads(sys.stdin.read()))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=10, help="Length of each measured scenario.")
    ap.add_argument("--workers", type=int, default=2, help="Worker processes of each server.")
    ap.add_argument("--no-feast", action="store_true", help="Skip the feast serve scenarios.")
    ap.add_argument("--only", default=None, help="Run only the scenarios whose name contains this text, or one of these comma-separated texts (e.g. scores,feast).")
    ap.add_argument("--repeat", type=int, default=3, help="Rounds over all scenarios; the table shows the median round and each round's p50/p99.")
    ap.add_argument("--smoke", action="store_true", help="2,000 customers, one worker, one round of 1 s a scenario: to check the benchmark runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.customers, args.seconds, args.repeat, args.workers = 2_000, 1.0, 1, 1

    import pandas as pd

    from feast_plugins.redis_server import free_port, throwaway_redis
    from online.metrics import FLUSH_S
    from synthetic.generate import PROFILES_FILE
    from skewless.store import REDIS_ENV, open_store

    procs: list[subprocess.Popen] = []
    results: list[dict] = []
    splits: dict[str, dict] = {}
    with throwaway_redis() as redis_ep:
        repo, models = prepare(args.customers, redis_ep.feast)
        os.environ[REDIS_ENV] = redis_ep.feast
        store = open_store(repo)
        seconds = fill_redis(store, datetime.now(timezone.utc))
        print(f"redis 127.0.0.1:{redis_ep.port}: {redis_ep.client().dbsize():,} keys, materialized in {seconds:.0f}s", flush=True)
        ids = pd.read_parquet(repo / "data" / PROFILES_FILE, columns=["customer_id"])["customer_id"].drop_duplicates().tolist()
        random.seed(1)
        sample = random.sample(ids, min(2000, len(ids)))

        env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}  # Feast sets its own on import
        env.update({REDIS_ENV: redis_ep.feast, "SKEWLESS_FEATURE_LOG_DIR": str(repo.parent / "feature_log")})
        app_port, feast_port = free_port(), free_port()
        app_log, feast_log = repo.parent / "service.log", repo.parent / "feast_serve.log"
        try:
            app = start([sys.executable, "-m", "skewless", "serve", "--port", str(app_port), "--workers", str(args.workers),
                         "--repo", str(repo), "--model-dir", str(models)], env, ROOT, app_log)
            procs.append(app)
            feast = None
            if not args.no_feast:
                # --max-requests 0: feast serve's default restarts each worker every ~1,000 requests
                feast = start([str(Path(sys.executable).with_name("feast")), "serve", "-h", "127.0.0.1", "-p", str(feast_port),
                               "-w", str(args.workers), "--no-access-log", "--max-requests", "0"], env, repo, feast_log)
                procs.append(feast)
            wait_ready(f"http://127.0.0.1:{app_port}/ready", app, app_log)
            if feast:
                wait_ready(f"http://127.0.0.1:{feast_port}/health", feast, feast_log)
            # the same service with an API key required: the cost of authentication, same run
            keyed_port, keyed_log = free_port(), repo.parent / "service_keyed.log"
            keyed = start([sys.executable, "-m", "skewless", "serve", "--port", str(keyed_port), "--workers", str(args.workers),
                           "--repo", str(repo), "--model-dir", str(models)], env | {"SKEWLESS_API_KEYS": BENCH_KEY}, ROOT, keyed_log)
            procs.append(keyed)
            wait_ready(f"http://127.0.0.1:{keyed_port}/ready", keyed, keyed_log)
            # the same service scoring one request at a time: what dynamic batching saves, same run
            single_port, single_log = free_port(), repo.parent / "service_unbatched.log"
            unbatched = start([sys.executable, "-m", "skewless", "serve", "--port", str(single_port), "--workers", str(args.workers),
                               "--repo", str(repo), "--model-dir", str(models)], env | {"SKEWLESS_BATCH_MAX_IDS": "1"}, ROOT, single_log)
            procs.append(unbatched)
            wait_ready(f"http://127.0.0.1:{single_port}/ready", unbatched, single_log)
            # the same service with every /predict through FastAPI's route: what the fast path saves, same run
            routed_port, routed_log = free_port(), repo.parent / "service_routed.log"
            routed = start([sys.executable, "-m", "skewless", "serve", "--port", str(routed_port), "--workers", str(args.workers),
                            "--repo", str(repo), "--model-dir", str(models)], env | {"SKEWLESS_PREDICT_FAST_PATH": "false"}, ROOT, routed_log)
            procs.append(routed)
            wait_ready(f"http://127.0.0.1:{routed_port}/ready", routed, routed_log)

            single = [http_post("/predict", {"customer_id": c}) for c in sample]
            single_key = [http_post("/predict", {"customer_id": c}, BENCH_KEY) for c in sample]
            batch = [http_post("/predict/batch", {"customer_ids": sample[i:i + 100]}) for i in range(0, len(sample), 100)]
            # feast serve is asked for churn_v1's view features: the same Redis reads, without the
            # transform and the model (it can run the on-demand views too, with `as_of` as Unix
            # seconds in the entities; the README's table was measured on the raw views).
            from online.features import FeatureLookup

            refs = FeatureLookup(store, "churn_v1").refs
            feast_req = [http_post("/get-online-features", {"features": refs, "entities": {"customer_id": [c]}}) for c in sample]
            health = [http_get("/health")]
            from online.scores import COLUMNS

            import duckdb

            with duckdb.connect(str(repo.parent / "predictions.duckdb"), read_only=True) as con:  # the customers with a stored score
                scored = [int(c) for (c,) in con.execute("SELECT customer_id FROM churn_predictions USING SAMPLE 2000 ROWS (reservoir, 1)").fetchall()]
            stored = [http_get(f"/scores/{c}") for c in scored]
            feast_scores = [http_post("/get-online-features", {"features": [f"churn_scores:{f}" for f in COLUMNS], "entities": {"customer_id": [c]}})
                            for c in scored]

            run_load(app_port, single, 100, 3)  # warm up the servers
            run_load(single_port, single, 100, 3)
            run_load(routed_port, single, 100, 3)
            if feast:
                run_load(feast_port, feast_req, 100, 3)
            scenarios = [
                ("skewless GET /health (HTTP floor)", app, app_port, health, 200, None),
                ("skewless GET /health (HTTP floor)", app, app_port, health, 1000, None),
                ("skewless GET /health (HTTP floor)", app, app_port, health, 2000, None),
                ("skewless POST /predict", app, app_port, single, 200, "/predict"),
                ("skewless POST /predict", app, app_port, single, 1000, "/predict"),
                ("skewless POST /predict", app, app_port, single, 1500, "/predict"),  # headroom
                ("skewless POST /predict", app, app_port, single, 2000, "/predict"),
                ("skewless POST /predict, no batching", unbatched, single_port, single, 200, "/predict"),
                ("skewless POST /predict, no batching", unbatched, single_port, single, 1000, "/predict"),
                ("skewless POST /predict, fast path off", routed, routed_port, single, 1000, "/predict"),
                ("skewless POST /predict, fast path off", routed, routed_port, single, 2000, "/predict"),
                ("skewless POST /predict, API key", keyed, keyed_port, single_key, 200, "/predict"),
                ("skewless POST /predict, API key", keyed, keyed_port, single_key, 1000, "/predict"),
                ("skewless POST /predict, rollout meanwhile", app, app_port, single, 1000, "/predict"),
                ("skewless POST /predict/batch (100 IDs)", app, app_port, batch, 20, "/predict/batch"),
                ("skewless GET /scores/{id}", app, app_port, stored, 200, None),
                ("skewless GET /scores/{id}", app, app_port, stored, 1000, None),
                ("skewless GET /scores/{id}", app, app_port, stored, 2000, None),
            ]
            if feast:
                scenarios += [
                    ("feast serve /get-online-features (1 ID)", feast, feast_port, feast_req, 200, None),
                    ("feast serve /get-online-features (1 ID)", feast, feast_port, feast_req, 1000, None),
                    ("feast serve churn_scores (1 ID)", feast, feast_port, feast_scores, 200, None),
                    ("feast serve churn_scores (1 ID)", feast, feast_port, feast_scores, 1000, None),
                ]
            if args.only:
                scenarios = [sc for sc in scenarios if any(part in sc[0] for part in args.only.split(","))]
            if args.smoke:  # every kind of scenario once, at the lowest rate
                scenarios = [sc for sc in scenarios if sc[4] <= 200 or "rollout" in sc[0]]
            for rep in range(args.repeat):  # rounds over every scenario: a noisy minute spreads over all of them
                for name, proc, port, payloads, rate, route in scenarios:
                    if route:  # every worker has handed its tallies to /metrics (online/metrics.py:FLUSH_S)
                        time.sleep(FLUSH_S + 0.3)
                    before = scrape(port) if route else {}
                    load = os.getloadavg()[0]  # other jobs on the machine show here
                    cpu0 = cpu_seconds(proc)
                    mover = RolloutDuring(models, args.seconds) if "rollout" in name else None
                    if mover is not None:
                        mover.start()
                    r = run_load(port, payloads, rate, args.seconds, track_versions=mover is not None)
                    if mover is not None:
                        mover.join()
                        r["rollout"] = mover.windows(r)
                    r.pop("slow"), r.pop("versions")  # only the rollout windows need them
                    r["server_cpu_ms_per_req"] = (cpu_seconds(proc) - cpu0) / max(r["answered"], 1) * 1000
                    if route:
                        time.sleep(FLUSH_S + 0.3)
                        splits.setdefault(f"{name} @ {rate}/s", []).append(stage_split(before, scrape(port), route))
                    results.append({"scenario": name, "rate": rate, "round": rep + 1, "load_before": load, **r})
                    print(f"round {rep + 1}: {name:42} {rate:>5}/s: p50 {r['p50']:.2f} ms  p95 {r['p95']:.2f}  p99 {r['p99']:.2f}  "
                          f"errors {r['errors']}  achieved {r['achieved_rps']:.0f}/s  server CPU {r['server_cpu_ms_per_req']:.2f} ms/req", flush=True)
        finally:
            for p in procs:
                stop(p)

    print("\n" + stamp("bench/online.py"))
    print(f"{args.customers:,} customers, {args.workers} workers per server, {os.cpu_count()} cores shared with the "
          f"load generator, Redis and whatever else runs; {args.repeat} round(s) of {args.seconds:g} s per scenario: "
          "the median round, and each round's p50 / p99 (load = 1-minute load average before the round)")
    print("\n| scenario | rate/s | achieved/s | p50 ms | p95 ms | p99 ms | max ms | errors | server CPU ms/req | load gen CPU ms/req | p50 of each round | p99 of each round |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, rate), rounds in _by_scenario(results).items():
        m = {k: statistics.median(r[k] for r in rounds) for k in ("achieved_rps", "p50", "p95", "p99", "max", "server_cpu_ms_per_req")}
        gen = statistics.median(r["loadgen_cpu_s"] / max(r["answered"], 1) * 1000 for r in rounds)
        print(f"| {name} | {rate} | {m['achieved_rps']:.0f} | {m['p50']:.2f} | {m['p95']:.2f} | {m['p99']:.2f} | {m['max']:.2f} | "
              f"{sum(r['errors'] for r in rounds)} | {m['server_cpu_ms_per_req']:.2f} | {gen:.2f} | "
              f"{_each(rounds, 'p50')} | {_each(rounds, 'p99')} |")
    rollouts = [r["rollout"] for r in results if "rollout" in r]
    if rollouts:
        print("\nrollout under load: the slowest request (ms) of each 1 s of the run, in the seconds that hold a worker's swap, "
              "after the move to the broken bundle, and in the other (quiet) seconds of the same run")
        print("| round | swap seconds: max | broken bundle: max | quiet seconds: median of their max | quiet seconds: max | "
              "first to last worker swapped, s |\n|---|---|---|---|---|---|")
        for i, w in enumerate(rollouts, 1):
            print(f"| {i} | {w['swap max ms']:.1f} | {w['broken max ms']:.1f} | {w['quiet median ms']:.1f} | {w['quiet max ms']:.1f} | "
                  f"{w['swap s']:.2f}{'' if w['answered by new'] else ' (the new version never answered!)'} |")
    for name, per_round in splits.items():
        print(f"\nwhere the time goes, {name} (mean ms per request measured by the service, median round):")
        for stage in per_round[0]:
            print(f"  {stage:38} {statistics.median(r[stage] for r in per_round):6.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "online.json").write_text(json.dumps({"results": results, "stages": splits}, indent=2))


if __name__ == "__main__":
    main()
