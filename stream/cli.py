"""`skewless stream`: run the event consumer, publish an event, replay, read the dead letters.

    skewless stream run [--consumer NAME] [--metrics-port 9108]     consume until SIGTERM / Ctrl-C
    skewless stream publish --customer 42 --type payment_failed     one event onto the bus
    skewless stream replay --from <entry ID | ISO time>             the group re-reads from there
    skewless stream dead-letters [-n 10]                            what was set aside, and why

The events arrive in the Redis named by REDIS_URL (or SKEWLESS_REDIS), the one the online store
is in: a throwaway Redis would receive nothing, so one must be named.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import click

from skewless.paths import REPO_DIR

DEFAULT_METRICS_PORT = 9108


def _named_redis():
    from feast_plugins.redis_server import configured_endpoint, redis_for_feast

    if configured_endpoint() is None:
        raise click.ClickException("no Redis named: set REDIS_URL (or SKEWLESS_REDIS) to the Redis the events arrive in and the online store is")
    return redis_for_feast()


@click.group("stream")
def stream() -> None:
    """The near-real-time path: account events -> live features -> new scores, within a second."""


@stream.command("run")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=REPO_DIR, show_default=True)
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where bundles are (default: models/, or SKEWLESS_MODEL_DIR).")
@click.option("--model", "version", default="latest", show_default=True, help="The bundle that scores (its FeatureService should hold the live features: churn_v2).")
@click.option("--consumer", default="consumer-1", show_default=True, help="This consumer's name in the group; a restart under the same name takes its own pending events back at once.")
@click.option("--batch", "count", type=click.IntRange(1, 10_000), default=100, show_default=True, help="Events per read.")
@click.option("--block-ms", type=click.IntRange(1, 60_000), default=50, show_default=True, help="How long a read waits for events.")
@click.option("--flush-s", type=float, default=1.0, show_default=True, help="How often staged rows become part files of the offline store.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=DEFAULT_METRICS_PORT, show_default=True, help="Its own /metrics on 127.0.0.1 (0: none).")
@click.option("--until-idle", type=float, default=None, help="Stop after this many seconds without an event (demos, tests).")
def run(repo, model_dir, version, consumer, count, block_ms, flush_s, metrics_port, until_idle) -> None:
    """Consume account events until SIGTERM or Ctrl-C (the batch in flight is finished first)."""
    if flush_s <= 0:
        raise click.ClickException(f"--flush-s must be positive, got {flush_s:g}")
    if until_idle is not None and until_idle < 0:
        raise click.ClickException(f"--until-idle must be 0 or more seconds, got {until_idle:g}")
    from feast_plugins.redis_server import store_client
    from stream.consumer import Consumer
    from stream.source import RedisStreamSource
    from skewless.bundle import DEFAULT_MODEL_DIR, BundleError, load_bundle
    from skewless.store import open_store

    with _named_redis() as endpoint:
        store = open_store(repo)
        try:
            bundle = load_bundle(version, model_dir or DEFAULT_MODEL_DIR, store=store)
        except BundleError as exc:
            raise click.ClickException(str(exc)) from None
        source = RedisStreamSource(store_client(store), consumer)
        loop = Consumer(store, bundle, source, consumer=consumer, flush_s=flush_s)
        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(metrics_port, addr="127.0.0.1")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        click.echo(f"consuming {source.stream} as {source.group}/{consumer} in redis {endpoint.where}, scoring with "
                   f"{bundle.name}/{bundle.version} ({bundle.feature_service}); scores on {loop.output_stream}"
                   + (f"; metrics on http://127.0.0.1:{metrics_port}/metrics" if metrics_port else ""), err=True)
        totals = {"read": 0, "applied": 0, "unchanged": 0, "dead": 0, "scored": 0}
        own = source.pending_of_mine(10_000)  # what this consumer read and did not acknowledge before it stopped
        idle_since, lag_at, waiting = time.monotonic(), 0.0, None
        while not stop.is_set():
            r = loop.step(count, block_ms, deliveries=own or None)  # its own first, once the views are loaded
            if loop.waiting != waiting:
                waiting = loop.waiting
                click.echo(waiting or "the views are loaded in this Redis: consuming", err=True)
            if own and r.read:
                click.echo(f"re-ran {len(own):,} events left unacknowledged by the previous run", err=True)
                own = []
            for k in totals:
                totals[k] += getattr(r, k)
            now = time.monotonic()
            if r.read:
                idle_since = now
            elif until_idle is not None and now - idle_since >= until_idle:
                break
            if now - lag_at >= 1.0:
                loop.lag()
                lag_at = now
        loop.close()
    click.echo(f"stopped: {totals['read']:,} events read, {totals['applied']:,} applied, {totals['unchanged']:,} unchanged, "
               f"{totals['dead']:,} dead-lettered, {totals['scored']:,} scores published")


@stream.command("publish")
@click.option("--customer", "customer_id", type=click.IntRange(0, 2**63 - 1), required=True)
@click.option("--type", "event_type", required=True, help="payment_failed, ticket_opened, plan_changed (with --amount seats), ...")
@click.option("--amount", type=float, default=None)
@click.option("--time", "when", default="now", show_default=True, help="The event time (ISO 8601 or `now`).")
@click.option("--event-id", type=int, default=None, help="Default: a new one from the clock.")
def publish(customer_id, event_type, amount, when, event_id) -> None:
    """Put one account event on the bus (what a billing or support system would send)."""
    from skewless.times import parse_time

    at = parse_time(when)
    from skewless.account_state import FUTURE_SKEW_S, BadEvent, parse
    from stream.source import EVENTS_STREAM

    fields = {"event_id": event_id if event_id is not None else time.time_ns() // 1000, "customer_id": customer_id,
              "event_type": event_type, "event_time": at.isoformat()}
    if amount is not None:
        fields["amount"] = amount
    try:
        parse({k: str(v) for k, v in fields.items()})  # what the consumer would dead-letter is refused here
    except BadEvent as exc:
        raise click.ClickException(f"not sent: {str(exc).removeprefix('schema: ')}") from None
    if at.timestamp() > time.time() + FUTURE_SKEW_S:
        raise click.ClickException(f"not sent: event time {at.isoformat()} is in the future: the consumer would set it aside")
    with _named_redis() as endpoint:
        fields["sent_at_us"] = time.time_ns() // 1000
        entry = endpoint.client().xadd(EVENTS_STREAM, fields).decode()
    click.echo(f"{entry} {json.dumps(fields)}")


@stream.command("replay")
@click.option("--from", "start", required=True, help="An entry ID (1733090000000-0) or a time (ISO 8601): the group re-reads from there.")
def replay(start) -> None:
    """Move the consumer group back; re-read events change nothing already applied, and are scored again."""
    from stream.source import replay_from
    from skewless.times import parse_time

    entry = start if start[:1].isdigit() and "-" in start and "T" not in start else str(int(parse_time(start).timestamp() * 1000))
    with _named_redis() as endpoint:
        at = replay_from(endpoint.client(), entry)
    click.echo(f"the group reads again after {at}")


@stream.command("dead-letters")
@click.option("-n", "count", type=click.IntRange(1, 10_000), default=10, show_default=True)
def dead_letters(count) -> None:
    """The newest dead letters: the entry, the reason, the fields as sent."""
    from stream.source import DEAD_STREAM

    with _named_redis() as endpoint:
        entries = endpoint.client().xrevrange(DEAD_STREAM, count=count)
    for entry_id, fields in entries:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        click.echo(f"{entry_id.decode()}  {f.pop('reason')}  {json.dumps(f)}")
    if not entries:
        click.echo("no dead letters")
