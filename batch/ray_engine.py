"""The batch job's chunks on a Ray cluster: `skewless score --engine ray [--address ADDRESS]`.

The same job, spread out. The driver (batch/job.py:run_batch) lists the customers, writes and
commits; each Ray task runs the single-machine path's own retrieval and scoring on one range
of customer IDs: Feast's `get_historical_features` through the bundle's FeatureService on the
DuckDB offline store, the registry's on-demand views (batch/retrieval.py), the one scoring
function (batch/job.py:score_frame). No second implementation of the point-in-time join: Feast's
own Ray offline store was measured and not used (it cannot filter by `created`, which every
skewless retrieval needs, ignores TTLs and breaks ties by file order, so its rows differ).

Exactly once: a task has no side effect, it returns its chunk (Arrow rows and counts) to the
driver, which writes each chunk index once into the staged run and commits when every range
is in. A task whose worker dies is retried by Ray (`max_retries`); a range Ray computes twice
(a retry, or lineage reconstruction after a node loss) is written once; a run that fails
leaves the previous results, as on one machine.

Without `--address`, a local Ray is started and stopped by the command: bounded CPUs and
object-store memory, no dashboard, on the loopback address. With one, an existing cluster is
used; its nodes must run this project's environment (start them with `.venv/bin/ray start`)
and see the same paths: the Feast repo, its sources and the model bundle (a shared
filesystem, or object-store URLs for the sources; see the README).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime

import numpy as np

from batch.job import RunInfo, ScoredChunk
from batch.stages import StageClock, rss_bytes
from skewless.paths import PROJECT_DIR

MAX_RETRIES = 3
_cache: dict[tuple, tuple] = {}  # per worker process: (repo, model dir, version) -> (store, bundle, contract)


def _worker_state(repo: str, model_dir: str, version: str):
    """The store, bundle and contract, built once per worker process (importing Feast takes seconds)."""
    key = (repo, model_dir, version)
    if key not in _cache:
        from batch.retrieval import resolve
        from skewless.bundle import load_bundle
        from skewless.store import open_store

        store = open_store(repo)
        bundle = load_bundle(version, model_dir, store=store)
        _cache[key] = (store, bundle, resolve(store, bundle.feature_service))
    return _cache[key]


def score_range(index: int, ids: np.ndarray, repo: str, model_dir: str, version: str, run: RunInfo, cpus: int) -> ScoredChunk:
    """One Ray task: the single-machine retrieval and scoring of one range of customer IDs."""
    from batch.job import score_frame
    from batch.retrieval import stream_features

    started = time.perf_counter()
    store, bundle, contract = _worker_state(repo, model_dir, version)
    bundle.scoring_threads = cpus
    warm = time.perf_counter()
    frame = next(stream_features(store, contract, ids, run.as_of, len(ids)))
    retrieved = time.perf_counter()
    chunk = score_frame(index, bundle, contract, frame, run)
    done = time.perf_counter()
    chunk.seconds = {"setup": warm - started, "retrieve": retrieved - warm, "score": done - retrieved, "rows": len(ids),
                     "rss_mb": rss_bytes() / 2**20, "pid": os.getpid(), "node": _node_id()}
    return chunk


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A head node's GCS answers at host:port, or one line saying it does not ("auto" and
    "ray://" addresses are Ray's to resolve)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"--address {address!r} is not host:port (the head node's `ray start --head --port`)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                              "(start it with `ray start --head --port PORT`, or drop --address for a local Ray)") from None


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class RayEngine:
    """`run_batch`'s engine on Ray: a callable producing ScoredChunks as their tasks finish."""

    def __init__(self, repo, model_dir, version: str, address: str | None = None, cpus: int | None = None,
                 object_store_mb: int = 512, in_flight: int | None = None, report=None):
        self.repo, self.model_dir, self.version = str(repo), str(model_dir), version
        self.address, self.cpus, self.object_store_mb = address, cpus, object_store_mb
        self.in_flight = in_flight
        self.report = report or (lambda done, total, rows, seconds: None)

    def __enter__(self) -> "RayEngine":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        runtime_env = {"env_vars": {"PYTHONPATH": str(PROJECT_DIR)}}  # the project's packages on every worker
        if self.address is None:
            cpus = self.cpus or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
            # address="local": a new Ray of our own, never one a stale file or RAY_ADDRESS points at
            ray.init(address="local", num_cpus=cpus, object_store_memory=self.object_store_mb * 2**20, include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False, logging_level=logging.WARNING, runtime_env=runtime_env)
        else:
            _check_reachable(self.address)  # ray.init waits minutes on an address nobody listens at
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING, runtime_env=runtime_env)
            except Exception as exc:  # ConnectionError, or Ray's own on a refused or token-protected cluster
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConnectionError(f"cannot reach the Ray cluster at {self.address}: {first} (a cluster with token auth also "
                                      "needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN)") from None
        self.ray = ray
        return self

    def __exit__(self, *exc) -> None:
        self.ray.shutdown()

    def cluster_cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def __call__(self, store, bundle, contract, ids: np.ndarray, as_of: datetime, chunk_rows: int, run: RunInfo,
                 clock: StageClock) -> Iterator[ScoredChunk]:
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(score_range)
        ids = np.asarray(ids, dtype=np.int64)  # unique already (run_batch), in the driver's order
        ranges = [ids[at:at + chunk_rows] for at in range(0, len(ids), chunk_rows)]
        limit = self.in_flight or 2 * self.cluster_cpus()  # bounded: results wait in the object store
        pending: dict = {}
        next_index, done, rows, started = 0, 0, 0, time.perf_counter()
        while next_index < len(ranges) or pending:
            while next_index < len(ranges) and len(pending) < limit:
                ref = task.remote(next_index, ranges[next_index], self.repo, self.model_dir, self.version, run, 1)
                pending[ref] = next_index
                next_index += 1
            with clock.stage("ray"):
                ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            pending.pop(ref)
            chunk = ray.get(ref)
            done += 1
            rows += chunk.processed
            self.report(done, len(ranges), rows, time.perf_counter() - started)
            yield chunk
