"""`skewless demo-online`: materialize, start the service, ask it for predictions with curl, stop.

What `make demo` runs for the online path, so a new user sees real requests and answers. Every
command it prints is run exactly as printed (through bash), and the demo fails if one fails:
what a user pastes is what was shown to work. The service listens on port 8000, the port
`skewless serve` uses by default, so the same lines work again against `skewless serve`
(another free port when 8000 is taken, and the lines say so). What happened goes to
data/demo/online.json for `skewless demo-summary`.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from skewless.paths import DATA_DIR, REPO_DIR

DEFAULT_PORT = 8000
RESULT = DATA_DIR / "demo" / "online.json"


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def curl_post(base: str, path: str, body: dict) -> str:
    """A curl line that works when pasted: JSON body, with its content type."""
    return f"curl -s -X POST {base}{path} -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"


def run_printed(command: str) -> str:
    """Print `command`, run it exactly as printed, print and return its output; fail the demo if it fails."""
    click.echo(f"$ {command}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise click.ClickException(f"the printed command failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    click.echo(result.stdout.strip())
    return result.stdout


def duckdb_row(customer_id: int) -> dict | None:
    """The customer's row of the newest full run in the predictions database, if there is one."""
    import duckdb

    from skewless.paths import PREDICTIONS_DB

    if not PREDICTIONS_DB.exists():
        return None
    with duckdb.connect(str(PREDICTIONS_DB), read_only=True) as con:
        row = con.execute(
            "SELECT p.churn_probability, p.risk_segment, p.run_id, p.as_of FROM churn_predictions p JOIN churn_runs r USING (run_id) "
            "WHERE r.kind = 'full' AND p.customer_id = ? ORDER BY p.as_of DESC, p.scored_at DESC LIMIT 1", [customer_id]).fetchone()
    if row is None:
        return None
    return {"churn_probability": row[0], "risk_segment": row[1], "run_id": row[2], "as_of": f"{row[3]:%Y-%m-%d %H:%M:%S} UTC"}


def live_event(store, endpoint, base: str, active) -> dict | None:
    """The near-real-time path: a consumer runs, a payment fails, the customer's new score is published.

    Only when the served bundle holds the live features (churn_v2, what `make demo` trains).
    """
    import threading

    import httpx

    from stream.consumer import Consumer
    from stream.source import EVENTS_STREAM, SCORES_STREAM, RedisStreamSource
    from online.settings import Settings
    from skewless.bundle import load_bundle

    settings = Settings()  # the same bundle the service serves (SKEWLESS_MODEL_DIR, SKEWLESS_MODEL_VERSION)
    bundle = load_bundle(settings.model_version, settings.model_dir, store=store)
    if "payment_failures_24h" not in bundle.feature_names:
        click.echo(f"(no live event: {bundle.name}/{bundle.version} is trained on {bundle.feature_service}, without the live features of churn_v2)")
        return None
    client = endpoint.client()
    consumer = Consumer(store, bundle, RedisStreamSource(client, "demo"), consumer="demo", flush_s=0.5)
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            consumer.step(100, 20)
        consumer.close()

    thread = threading.Thread(target=consume, name="stream-consumer", daemon=True)
    thread.start()
    try:
        cid = int(active.sample(1, random_state=7).iloc[0])
        before = httpx.post(f"{base}/predict", json={"customer_id": cid}).json()
        last = client.xadd(SCORES_STREAM, {"marker": "demo"}).decode()  # read the scores published after this point
        sent = time.time()
        at = datetime.now(timezone.utc)
        client.xadd(EVENTS_STREAM, {"event_id": time.time_ns() // 1000, "customer_id": cid, "event_type": "payment_failed",
                                    "event_time": at.isoformat(), "amount": 49.0, "sent_at_us": int(sent * 1e6)})
        scored = None
        while scored is None and time.time() - sent < 10:
            for _, entries in client.xread({SCORES_STREAM: last}, block=1000) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if fields.get(b"customer_id") == str(cid).encode():
                        scored = {k.decode(): v.decode() for k, v in fields.items()}
        if scored is None:
            raise click.ClickException(f"the stream consumer published no score for customer {cid} within 10 s")
        ms = (int(last.split(b"-")[0]) - sent * 1000)
        after = float(scored["churn_probability"])
        click.echo(f"live event: customer {cid}'s payment failed at {at:%H:%M:%S} UTC; on {EVENTS_STREAM}, the stream consumer updated the "
                   f"live features and published a new score on {SCORES_STREAM} {ms:.0f} ms later: "
                   f"{before['churn_probability']:.3f} ({before['risk_segment']}) -> {after:.3f} ({scored['risk_segment']})")
        stored = json.loads(run_printed(f"curl -s {base}/scores/{cid}"))
        return {"customer_id": cid, "before": before["churn_probability"], "before_segment": before["risk_segment"], "after": after,
                "after_segment": scored["risk_segment"], "ms": round(ms, 1), "stored_source": stored.get("source")}
    finally:
        stop.set()
        thread.join(timeout=30)


@click.command("demo-online")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
@click.option("--customers", "count", type=int, default=3, show_default=True, help="How many customers to ask about with curl.")
@click.option("--traffic", type=int, default=1000, show_default=True, help="More predictions through /predict/batch, for the skew report.")
@click.option("--result", "result_path", type=click.Path(dir_okay=False, path_type=Path), default=RESULT, show_default=True)
def demo_online(repo: Path, count: int, traffic: int, result_path: Path) -> None:
    """Materialize to now, serve, POST /predict for a few customers (printed curl lines), then stop the service."""
    import httpx

    from batch.retrieval import active_customers
    from feast_plugins.materialize import materialize
    from feast_plugins.redis_server import free_port, redis_for_feast
    from skewless.store import open_store

    with redis_for_feast() as endpoint:
        store = open_store(repo)
        now = datetime.now(timezone.utc)
        summary = materialize(store, now)  # a new, empty Redis holds no watermark: each view loads whole
        click.echo(f"materialized {len(summary['views'])} views into redis {endpoint.host}:{endpoint.port} "
                   f"({summary['rows']:,} rows) in {summary['seconds']:.1f}s")
        active = active_customers(store, now)
        ids = active.sample(count, random_state=1).tolist()
        port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port()
        env = dict(os.environ, SKEWLESS_REPO_PATH=str(repo))
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "online.app:create_app", "--factory", "--port", str(port), "--log-level", "warning"],
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/ready?route=predict", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise click.ClickException("the service did not become ready: see its output above")
                time.sleep(0.2)
            click.echo(f"the service answers at {base} (docs at {base}/docs)" + ("" if port == DEFAULT_PORT else f"; port {DEFAULT_PORT} was taken"))
            answers = [json.loads(run_printed(curl_post(base, "/predict", {"customer_id": cid}))) for cid in ids]
            run_printed(curl_post(base, "/predict/batch", {"customer_ids": [*ids[:2], 10**12]}))
            stored = json.loads(run_printed(f"curl -s {base}/scores/{ids[0]}"))
            duck = duckdb_row(ids[0])
            if duck:
                click.echo(f"  the same customer in DuckDB (churn_predictions, run {duck['run_id']}): probability {duck['churn_probability']}, "
                           f"segment {duck['risk_segment']}, as-of {duck['as_of']}: the score /scores serves, no model call")
            run_printed(f"curl -s {base}/ready")
            live = live_event(store, endpoint, base, active)
            # traffic for the skew report: active customers, 100 per request
            crowd = active.sample(min(traffic, len(active)), random_state=0).tolist()
            for i in range(0, len(crowd), 100):
                httpx.post(f"{base}/predict/batch", json={"customer_ids": crowd[i:i + 100]}, timeout=30).raise_for_status()
            click.echo(f"served {len(crowd):,} more predictions through /predict/batch for the skew report")
        finally:
            server.terminate()  # a clean shutdown flushes the feature log
            server.wait(timeout=30)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    # the curl lines (one each, and a batch of 2 known IDs), the live event's score before its event, the crowd
    served = len(answers) + 2 + (live is not None) + len(crowd)
    result = {"at": now.isoformat(), "port": port, "predictions": served, "answers": answers,
              "materialized_rows": summary["rows"], "stored_score": stored, "live_event": live}
    tmp = result_path.with_name(f".{result_path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(result_path)
