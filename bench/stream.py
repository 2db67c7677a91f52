"""Benchmark the near-real-time path: account events -> online features -> published scores.

    .venv/bin/python bench/stream.py [--customers 50000] [--seconds 20] [--rates 1000,2000,4000] [--repeat 2]

1. Prepares bench/results/stream-<n>/: feature_repo, data (with the event log) ending now,
   applied, a churn_v2 bundle trained on it. Reused the same day.
2. A private redis-server, every view materialized; the real consumer (`skewless stream run`)
   in its own process.
3. For each rate, an open-loop producer XADDs state-changing events (payment failures, support
   tickets, plan changes) of random customers at that rate, each stamped `sent_at_us`. From the
   published scores, which carry the event id and when the consumer had written the state
   (`features_written_at_us`): event to online feature and event to published score, per event,
   p50/p95/p99; events/s achieved; loss (events whose effect is not in the online state at the
   end). A rate counts as sustained when every event is applied and p99 stays under 1 s.
4. Feast's own push path on the same kind of events in the same run: `store.push(ONLINE)` of
   the same state rows, one event per call and 100 per call, and `feast serve`'s `/push`.

Only loopback; every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from report import RESULTS, ROOT, stamp
sys.path.insert(0, str(ROOT))

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
KINDS = [("payment_failed", None), ("ticket_opened", None), ("plan_changed", "seats")]


def prepare(n: int, redis_feast: str) -> tuple[Path, Path]:
    from synthetic.generate import GenerateConfig, generate
    from skewless.store import REDIS_ENV, open_store
    from training.train import train

    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    base = RESULTS / f"stream-{n}"
    repo, models, marker = base / "feature_repo", base / "models", base / "prepared.json"
    if marker.exists() and json.loads(marker.read_text()).get("day") == today:
        return repo, models
    print(f"preparing {base} ({n:,} customers, data ending now, a churn_v2 bundle)", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__", "*.db"))
    generate(GenerateConfig(customers=n, end=datetime.now(timezone.utc).replace(microsecond=0)), repo / "data")
    env = dict(os.environ, **{REDIS_ENV: redis_feast})
    subprocess.run([str(Path(sys.executable).with_name("feast")), "apply"], cwd=repo, env=env, check=True, capture_output=True)
    train(open_store(repo), repo, models, max_rows=200_000, feature_service="churn_v2")
    marker.write_text(json.dumps({"day": today, "customers": n}))
    return repo, models


def produce(client, ids: list[int], rate: float, seconds: float, first_id: int) -> dict[int, tuple[int, int, str]]:
    """Open loop: event i is sent at t0 + i/rate; returns event id -> (customer, sent_at_us, kind)."""
    from stream.source import EVENTS_STREAM

    sent: dict[int, tuple[int, int, str]] = {}
    n = int(rate * seconds)
    t0 = time.perf_counter() + 0.05
    rng = random.Random(first_id)
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0.0005:
            pipe.execute()
            time.sleep(delay)
        cid = rng.choice(ids)
        kind, amount = KINDS[i % len(KINDS)]
        at_us = time.time_ns() // 1000  # the event time too, to the microsecond, so loss can be checked exactly
        now = EPOCH + timedelta(microseconds=at_us)
        fields = {"event_id": first_id + i, "customer_id": cid, "event_type": kind, "event_time": now.isoformat(), "sent_at_us": at_us}
        if amount:
            fields["amount"] = rng.randint(1, 40)
        pipe.xadd(EVENTS_STREAM, fields)
        sent[first_id + i] = (cid, at_us, kind)
    pipe.execute()
    return sent


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


def measure(client, sent: dict[int, tuple[int, int, str]], since: bytes, wait_s: float) -> dict:
    """Latencies from the scores published after `since`, once every event is covered or `wait_s` passes.

    The consumer re-scores a customer once a batch, naming the batch's last event of that
    customer; a score covers every earlier event of the customer too, so each event's latency
    is from its send to the first score published for its customer naming it or a later event.
    """
    from stream.source import SCORES_STREAM

    pending: dict[int, list[int]] = {}  # customer -> its event ids not covered yet, in order
    for eid in sorted(sent):
        pending.setdefault(sent[eid][0], []).append(eid)
    deadline = time.monotonic() + wait_s
    feature, score, covered = [], [], 0
    last = since
    while time.monotonic() < deadline and covered < len(sent):
        for _, entries in client.xread({SCORES_STREAM: last}, count=10_000, block=200) or []:
            for entry_id, f in entries:
                last = entry_id
                eid = int(f.get(b"event_id", b"0"))
                if eid not in sent:
                    continue
                waiting = pending.get(sent[eid][0], [])
                published_us = int(entry_id.split(b"-")[0]) * 1000
                written_us = int(f[b"features_written_at_us"])
                while waiting and waiting[0] <= eid:
                    at = sent[waiting.pop(0)][1]
                    feature.append((written_us - at) / 1000)
                    score.append((published_us - at) / 1000)
                    covered += 1
    return {"scored_events": covered, "feature_ms": feature, "score_ms": score}


def lost(store, sent: dict[int, tuple[int, int, str]]) -> int:
    """Events whose effect is not in the online state now (each payment failure and ticket must be there)."""
    from skewless.account_state import FIELDS

    by_customer: dict[int, list[tuple[str, int]]] = {}
    for cid, at, kind in sent.values():
        by_customer.setdefault(cid, []).append((kind, at))
    ids = list(by_customer)
    got = store.get_online_features(features=[f"account_state:{f}" for f in FIELDS], entity_rows=[{"customer_id": c} for c in ids]).to_dict()
    missing = 0
    for j, cid in enumerate(ids):
        failures = set(got["payment_failure_times_us"][j] or [])
        tickets = set(got["support_ticket_times_us"][j] or [])
        for kind, at in by_customer[cid]:
            if (kind == "payment_failed" and at not in failures) or (kind == "ticket_opened" and at not in tickets):
                missing += 1
    return missing


def feast_push(store, ids: list[int], n: int) -> dict:
    """Feast's own push of the same kind of state rows: one per call, and 100 per call."""
    import pandas as pd
    from feast.data_source import PushMode

    def rows(k: int) -> pd.DataFrame:
        now = pd.Timestamp.now(tz="UTC")
        return pd.DataFrame({"customer_id": random.sample(ids, k), "event_timestamp": now, "created": now, "live_seats": 5,
                             "seats_changed_at_us": 0, "payment_failure_times_us": [[int(now.value // 1000)]] * k,
                             "support_ticket_times_us": [[]] * k, "last_payment_failure_at_us": int(now.value // 1000)})

    one, hundred = [], []
    for _ in range(n):
        df = rows(1)
        t = time.perf_counter()
        store.push("account_state_push", df, to=PushMode.ONLINE)
        one.append((time.perf_counter() - t) * 1000)
    for _ in range(max(3, n // 20)):
        df = rows(100)
        t = time.perf_counter()
        store.push("account_state_push", df, to=PushMode.ONLINE)
        hundred.append((time.perf_counter() - t) * 1000)
    return {"push_1_ms": one, "push_100_ms": hundred}


def feast_serve_push(repo: Path, env: dict, ids: list[int], n: int) -> list[float]:
    """`feast serve`'s POST /push of the same kind of state rows, one row a request, sequentially."""
    import httpx

    from feast_plugins.redis_server import free_port

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("feast")), "serve", "-h", "127.0.0.1", "-p", str(port), "-w", "1", "--no-access-log"],
                            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        out = []
        with httpx.Client(timeout=10) as http:
            for _ in range(n):
                now = datetime.now(timezone.utc)
                us = int(now.timestamp() * 1e6)
                body = {"push_source_name": "account_state_push", "to": "online", "df": {
                    "customer_id": [random.choice(ids)], "event_timestamp": [now.isoformat()], "created": [now.isoformat()],
                    "live_seats": [5], "seats_changed_at_us": [0], "payment_failure_times_us": [[us]], "support_ticket_times_us": [[]],
                    "last_payment_failure_at_us": [us]}}
                t = time.perf_counter()
                r = http.post(f"http://127.0.0.1:{port}/push", json=body)
                out.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200:
                    print(f"feast serve /push answered {r.status_code}: {r.text[:200]}", flush=True)
                    break
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rates", default="1000,2000,4000")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch", type=int, default=200, help="The consumer's --batch.")
    ap.add_argument("--smoke", action="store_true", help="2,000 customers, one round of 2 s at 200 events/s: to check the benchmark runs (make test)")
    args = ap.parse_args()
    if args.smoke:
        args.customers, args.seconds, args.rates, args.repeat = 2_000, 2.0, "200", 1

    import pandas as pd

    from feast_plugins.materialize import materialize
    from feast_plugins.redis_server import throwaway_redis
    from stream.source import SCORES_STREAM
    from synthetic.generate import PROFILES_FILE
    from skewless.store import REDIS_ENV, open_store

    results = []
    with throwaway_redis() as redis_ep:
        repo, models = prepare(args.customers, redis_ep.feast)
        os.environ[REDIS_ENV] = redis_ep.feast
        store = open_store(repo)
        materialize(store, datetime.now(timezone.utc))
        ids = pd.read_parquet(repo / "data" / PROFILES_FILE, columns=["customer_id"])["customer_id"].drop_duplicates().tolist()
        client = redis_ep.client(timeout=30)
        env = dict(os.environ, REDIS_URL=redis_ep.url, SKEWLESS_REDIS=redis_ep.feast, SKEWLESS_MODEL_DIR=str(models))
        log = open(repo.parent / "consumer.log", "w")
        consumer = subprocess.Popen([sys.executable, "-m", "skewless", "stream", "run", "--repo", str(repo), "--batch", str(args.batch),
                                     "--metrics-port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            time.sleep(1)
            warm = produce(client, ids, 50, 2, 10**12)  # the consumer starts (imports) while these wait in the stream
            measure(client, warm, b"0-0", 180)
            event_id = 2 * 10**12
            for rep in range(args.repeat):
                for rate in [float(r) for r in args.rates.split(",")]:
                    since = client.xadd(SCORES_STREAM, {"marker": "bench"})
                    load = os.getloadavg()[0]
                    t = time.perf_counter()
                    sent = produce(client, ids, rate, args.seconds, event_id)
                    produced_s = time.perf_counter() - t
                    m = measure(client, sent, since, 60)
                    drained_s = time.perf_counter() - t
                    event_id += len(sent) + 1
                    r = {"rate": rate, "round": rep + 1, "load_before": load, "sent": len(sent), "scored": m["scored_events"],
                         "achieved_eps": len(sent) / produced_s, "drained_s": drained_s,
                         **{f"feature_{p}": pct(m["feature_ms"], p) for p in (50, 95, 99)},
                         **{f"score_{p}": pct(m["score_ms"], p) for p in (50, 95, 99)}, "lost": lost(store, sent)}
                    results.append(r)
                    print(f"round {rep + 1} @{rate:>6.0f}/s: sent {r['sent']:,} ({r['achieved_eps']:.0f}/s), scored {r['scored']:,}, lost {r['lost']}, "
                          f"event->feature p50 {r['feature_50']:.1f} p99 {r['feature_99']:.1f} ms, event->score p50 {r['score_50']:.1f} "
                          f"p99 {r['score_99']:.1f} ms", flush=True)
        finally:
            os.killpg(consumer.pid, signal.SIGTERM)
            consumer.wait(timeout=30)
        push = feast_push(store, ids, 200)
        push["serve_push_ms"] = feast_serve_push(repo, env, ids, 200)

    print("\n" + stamp("bench/stream.py"))
    print(f"{args.customers:,} customers, consumer --batch {args.batch}, {os.cpu_count()} cores shared with the producer and Redis; "
          f"{args.repeat} round(s) of {args.seconds:g} s per rate (median round)")
    print("\n| rate/s | achieved/s | events | lost | event->feature p50 / p95 / p99 ms | event->score p50 / p95 / p99 ms | sustained |")
    print("|---|---|---|---|---|---|---|")
    by_rate: dict[float, list[dict]] = {}
    for r in results:
        by_rate.setdefault(r["rate"], []).append(r)
    for rate, rounds in by_rate.items():
        m = {k: statistics.median(r[k] for r in rounds) for k in ("achieved_eps", "feature_50", "feature_95", "feature_99", "score_50", "score_95", "score_99")}
        ok = all(r["lost"] == 0 and r["scored"] == r["sent"] and r["score_99"] <= 1000 for r in rounds)
        print(f"| {rate:.0f} | {m['achieved_eps']:.0f} | {sum(r['sent'] for r in rounds):,} | {sum(r['lost'] for r in rounds)} | "
              f"{m['feature_50']:.1f} / {m['feature_95']:.1f} / {m['feature_99']:.1f} | {m['score_50']:.1f} / {m['score_95']:.1f} / {m['score_99']:.1f} | "
              f"{'yes' if ok else 'no'} |")
    print(f"\nFeast's store.push(ONLINE), same state rows: 1 row p50 {pct(push['push_1_ms'], 50):.1f} ms p99 {pct(push['push_1_ms'], 99):.1f} ms; "
          f"100 rows p50 {pct(push['push_100_ms'], 50):.1f} ms p99 {pct(push['push_100_ms'], 99):.1f} ms "
          f"(= {1000 / max(pct(push['push_1_ms'], 50), 1e-9):.0f} events/s one by one); "
          f"feast serve /push, 1 row a request: p50 {pct(push['serve_push_ms'], 50):.1f} ms p99 {pct(push['serve_push_ms'], 99):.1f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stream.json").write_text(json.dumps({"results": results, "feast_push": push}, indent=2))


if __name__ == "__main__":
    main()
