"""`skewless stream`'s loop: account events in, live features and new scores out, within a second.

Per batch of events (stream/source.py delivers them, at least once):

1. each entry is parsed and checked: one that does not fit the schema, names an unknown
   customer (no profile in the online store), has a time in the future, repeats an event
   already applied, or reuses a known event ID with another payload, goes to the dead-letter
   stream with the reason; the rest go on;
2. the current account state of the customers concerned is read from Redis (Feast's layout)
   and the events folded into it by the one state function (skewless/account_state.py);
3. the changed states are written to a staging Parquet file, fsynced: the durable record,
   before anything is visible. Every `flush_s` staged files become one part file of the
   `account_state` view's source directory (what Feast's offline retrieval reads, so training
   and batch see what online saw, with `created` = when it became visible);
4. the states are written to Redis with the materialization engine's newer-wins script, in
   Feast's layout (feast_plugins/materialize_engine.py): an older state never replaces a newer;
   then each event's ID is recorded (`skewless:events:seen:<id>`, its payload's fingerprint,
   kept for the state's retention window);
5. the affected customers are scored with the served bundle, through the service's own feature
   read and the one scoring function (at this instant, as /predict would); the scores are
   staged, stored in the `churn_scores` view (online now, offline at the next flush), so
   /scores serves them by ID, then published on the output stream;
6. the entries are acknowledged.

Exactly once, in effect, for the whole effect of an event (state online and offline, the
stored score, the published score). A crash at any point between these steps leaves the batch
unacknowledged, and it is redelivered (flagged `redelivered`). A redelivered event is applied
again only if its state is not there (folding is idempotent: a repeat changes nothing), and
its customer is *always* scored again, stored and published, whatever the state said: so a
crash after the state write never leaves a customer with the score from before the event. A
re-published score carries the same event ID (readers drop repeats); a re-stored one is newer
and replaces the first. At worst the offline state source holds the same state row twice
(same values and event time, a later `created`), which no point-in-time read can tell apart.
The tests kill the consumer at each boundary (`boundary()` below) and check all four effects.

Duplicates are recognised by event ID first (the identity for every at-least-once producer):
an ID seen within the window (the state view's `retention` tag, 48 h) with the same payload
is a duplicate (dead-lettered as such, unless it is a redelivery); with another payload it is
dead-lettered with both payloads named, and never applied. Past the window, the state's own
rule still holds: an event of the same type at the same microsecond changes nothing.

One consumer per stream: two would each read-modify-write the same customer (shard the stream
by customer for more).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from feast_plugins import watermark
from feast_plugins.materialize_engine import Pipeline, plan_view, write_rows
from feast_plugins.redis_layout import view_name
from feast_plugins.redis_server import store_client
from feast_plugins.served_runs import scores_view
from online.features import FeatureLookup, RedisReader
from stream import metrics
from stream.source import SCORES_STREAM, Delivery, EventSource
from skewless.account_state import FIELDS, FUTURE_SKEW_S, SEATS_EVENTS, AccountState, BadEvent, Event, apply, parse
from skewless.score import score, warm_up

log = logging.getLogger("skewless.stream")
STATE_VIEW = "account_state"
PROFILE_VIEW = "customer_profile"  # a customer the online store has no profile for is unknown
STAGED_KEY = b"skewless.staged"  # a part file's metadata: the staged files it was made of
SEEN_PREFIX = b"skewless:events:seen:"  # + event ID -> its payload (fingerprint()), for the state's retention
BOUNDARIES = ("state-staged", "state-written", "scores-staged", "scores-stored", "published")  # in order; then the ack
_KILL_AT = os.environ.get("SKEWLESS_STREAM_KILL_AT")  # tests only: one of BOUNDARIES (boundary())
CHECK_LOADED_S = 0.1  # how often a consuming consumer checks that this Redis still holds the views it reads
STATE_TYPE = pa.schema([
    ("customer_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC")), ("created", pa.timestamp("us", tz="UTC")),
    ("live_seats", pa.int64()), ("seats_changed_at_us", pa.int64()), ("payment_failure_times_us", pa.list_(pa.int64())),
    ("support_ticket_times_us", pa.list_(pa.int64())), ("last_payment_failure_at_us", pa.int64()),
])


def _retention_us(view) -> int:
    from skewless.times import parse_duration

    return int(parse_duration((view.tags or {}).get("retention", "48h"), f"the retention tag of {view.name}").total_seconds() * 1_000_000)


@dataclass
class BatchResult:
    read: int = 0
    applied: int = 0  # events that changed a state
    unchanged: int = 0  # valid events that change no state (another type, an older seats value, a replayed repeat)
    dead: int = 0
    scored: int = 0


@dataclass
class Consumer:
    """The loop's state: the views resolved once, the bundle, where rows are staged."""

    store: object
    bundle: object
    source: EventSource
    consumer: str = "consumer-1"
    flush_s: float = 1.0
    output_stream: str = SCORES_STREAM
    staged: list[Path] = field(default_factory=list)
    last_flush: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        from feast.infra.offline_stores.file_source import FileSource

        store = self.store
        self.client = store_client(store)
        self.state_view = store.get_feature_view(STATE_VIEW)
        self.retention_us = _retention_us(self.state_view)
        self.state_plan = plan_view(store.config, self.state_view)
        if isinstance(self.state_plan, str):
            raise ValueError(f"{STATE_VIEW}: {self.state_plan}: the consumer writes Feast's Redis layout itself")
        profile = store.get_feature_view(PROFILE_VIEW)
        self.reader = RedisReader.for_store(store, [(self.state_view, list(FIELDS)), (profile, [])], "customer_id")
        self.lookup = FeatureLookup(store, self.bundle.feature_service)
        self.state_dir = Path(FileSource.get_uri_for_file_path(store.repo_path, self.state_view.batch_source.path))
        self.scores = scores_view(store)
        self.scores_plan = plan_view(store.config, self.scores) if self.scores is not None else None
        self.scores_dir = Path(FileSource.get_uri_for_file_path(store.repo_path, self.scores.batch_source.path)) if self.scores else None
        # every view read here (the state folded into, the profiles that make a customer known, what
        # scoring reads) must have been loaded into *this* Redis (feast_plugins/watermark.py)
        reads = {STATE_VIEW: self.state_view, PROFILE_VIEW: profile, **{v.name: v for v, _ in self.lookup.reads}}
        self.needs = [(view_name(v, store.config), v, None) for v in reads.values()]  # (name in Redis, view, no budget)
        self.registry_id = watermark.registry_id(store.registry, store.project)
        self.waiting: str | None = None  # why events are left on the bus for now, None while consuming
        self._checked_at = float("-inf")
        self.pipe = Pipeline(self.client, "stream").__enter__()  # one connection for the writes, the script loaded once
        self._lock = threading.Lock()
        self._flushing: threading.Thread | None = None
        self._pending = {"state": [], "scores": []}  # (staged file, rows) since the last flush
        self.clean_leftovers()
        self.flush(from_disk=True)  # what a previous run staged and did not get to flush
        warm_up(self.bundle)

    # ------------------------------------------------------------------ one batch
    def step(self, count: int = 100, block_ms: int = 50, deliveries: list[Delivery] | None = None) -> BatchResult:
        if self._not_loaded(block_ms):
            return BatchResult()  # the events stay on the bus (or pending, claimed again later): none is lost
        deliveries = self.source.read(count, block_ms) if deliveries is None else deliveries
        result = BatchResult(read=len(deliveries))
        if deliveries:
            self._process(deliveries, result)
            self.source.ack(deliveries)
        if time.monotonic() - self.last_flush >= self.flush_s and (self._flushing is None or not self._flushing.is_alive()):
            # off the event path: a flush writes and fsyncs a part file per view (tens of ms)
            self.last_flush = time.monotonic()
            self._flushing = threading.Thread(target=self.flush, name="stream-flush", daemon=True)
            self._flushing.start()
        return result

    def _not_loaded(self, block_ms: int) -> bool:
        """Whether a view the consumer reads is missing from this Redis (a new, flushed or replaced
        one, or never materialized); then it waits `block_ms` and reads nothing.

        An event folded into a state that is not there would start the customer's history over:
        the new state (newer than anything offline) would then win over the full one, online at
        the next materialization and offline at the next flush. Left on the bus, the events are
        applied once `skewless materialize` has loaded the views. Checked at most every
        CHECK_LOADED_S while consuming (one HGETALL, ~0.3 ms here), before every read while
        waiting. A flush between two checks costs nothing worse: its customers have no profile
        left, so their events are dead-lettered as unknown (`skewless stream replay` brings them
        back), not folded into an empty state.
        """
        now = time.monotonic()
        if self.waiting is None and now - self._checked_at < CHECK_LOADED_S:
            return False
        self._checked_at = now
        marks = watermark.read_all(self.client, self.store.project)
        problems = watermark.check(marks, self.needs, self.registry_id, datetime.now(timezone.utc)).problems
        reason = f"not consuming: {'; '.join(problems)}" if problems else None
        if reason != self.waiting:
            log.info(reason or "the views are loaded in this Redis: consuming")  # `skewless stream run` prints it
            metrics.WAITING.set(1 if reason else 0)
            self.waiting = reason
        if reason:
            time.sleep(block_ms / 1000)
        return reason is not None

    def settle(self) -> None:
        """Every staged row in the offline store now: the flush in flight, then one more."""
        if self._flushing is not None:
            self._flushing.join()
        self.flush()

    def close(self) -> None:
        """Settle, and give the write connection back."""
        self.settle()
        self.pipe.__exit__(None, None, None)

    def _process(self, deliveries: list[Delivery], result: BatchResult) -> None:
        now = datetime.now(timezone.utc)
        parsed: list[tuple[Delivery, Event]] = []
        for d in deliveries:
            try:
                event = parse(d.fields)
            except BadEvent as exc:
                self._dead(d, "schema", str(exc), result)
                continue
            if event.time_us > (now.timestamp() + FUTURE_SKEW_S) * 1_000_000:
                self._dead(d, "future", f"event time {d.fields.get('event_time')} is in the future (now {now.isoformat(timespec='seconds')})", result)
                continue
            parsed.append((d, event))
        if not parsed:
            return
        seen = self._seen([e.event_id for _, e in parsed])  # event ID -> payload, of events applied before
        customers = list(dict.fromkeys(e.customer_id for _, e in parsed))
        values: dict[str, list] = {}
        ts = self.reader.read(customers, now.timestamp(), values)
        known = {c for c, t in zip(customers, ts[PROFILE_VIEW]) if t}
        states = {c: AccountState.from_values(c, {f: values[f][i] for f in FIELDS}) for i, c in enumerate(customers)}
        changed: set[int] = set()  # customers whose state this batch changes
        events: dict[int, list[tuple[Delivery, Event]]] = {}  # per customer to score: its events of this batch
        accepted: dict[int, str] = {}  # event ID -> payload, recorded once the states are written
        for d, event in parsed:
            cid = event.customer_id
            if cid not in known:
                self._dead(d, "unknown_customer", f"unknown customer {cid}: no profile in the online store", result)
                continue
            payload = fingerprint(event)
            before = accepted.get(event.event_id, seen.get(event.event_id))
            if before is not None and before != payload:
                self._dead(d, "changed_payload", f"event_id {event.event_id} was applied before as ({before}); this entry says ({payload}): "
                           "not applied (an event's ID is its identity: send a correction under a new ID)", result)
                continue
            new = None if before is not None else apply(states[cid], event, self.retention_us)
            if new is None:
                if (before is not None or repeats(states[cid], event)) and not d.redelivered:
                    self._dead(d, "duplicate", f"duplicate: event {event.event_id} ({event.event_type} at {d.fields.get('event_time')}) is already applied", result)
                    continue
                result.unchanged += 1
                metrics.EVENTS.labels(outcome="unchanged").inc()
                if d.redelivered:  # its state may be written and its score not: scored again (module docstring)
                    events.setdefault(cid, []).append((d, event))
            else:
                states[cid] = new
                changed.add(cid)
                events.setdefault(cid, []).append((d, event))
                result.applied += 1
                metrics.EVENTS.labels(outcome="applied").inc()
            accepted[event.event_id] = payload
        self.state_written_at_us = int(time.time() * 1e6)
        if changed:
            table = state_table([states[c] for c in events if c in changed], datetime.now(timezone.utc))
            self._stage(table, "state")
            boundary("state-staged")
            write_rows(self.client, self.state_plan, online_batch(table, self.state_plan), pipe=self.pipe)
            done = time.time()
            self.state_written_at_us = int(done * 1e6)
            for cid in changed:
                for d, _ in events[cid]:
                    metrics.EVENT_TO_FEATURE.observe(max(0.0, done - arrival_s(d)))
            boundary("state-written")
        if accepted:
            self._remember(accepted)
        if events:
            result.scored = self._score(events)

    def _seen(self, event_ids: list[int]) -> dict[int, str]:
        """The payloads recorded for those of `event_ids` applied within the window."""
        ids = list(dict.fromkeys(event_ids))
        got = self.client.mget([SEEN_PREFIX + str(i).encode() for i in ids])
        return {i: v.decode() for i, v in zip(ids, got) if v is not None}

    def _remember(self, accepted: dict[int, str]) -> None:
        """Record the events of a batch whose states are written (after, never before: a crash
        between the two leaves a redelivered event that the state itself shows as applied)."""
        ttl = max(1, self.retention_us // 1_000_000)
        with self.client.pipeline(transaction=False) as pipe:
            for event_id, payload in accepted.items():
                pipe.set(SEEN_PREFIX + str(event_id).encode(), payload, ex=ttl)
            pipe.execute()

    def _score(self, events: dict[int, list[tuple[Delivery, Event]]]) -> int:
        """Score `events`' customers at this instant; stage, store, then publish each score
        under the ID of the customer's newest event of the batch."""
        customers = list(events)
        now = datetime.now(timezone.utc)
        got = self.lookup.lookup(customers, now)
        found = [i for i, ok in enumerate(got.found) if ok]
        if not found:
            return 0
        ids = [customers[i] for i in found]
        feats = {k: [v[i] for i in found] for k, v in got.values.items()}
        s = score(self.bundle, feats)
        scored_at = datetime.now(timezone.utc)
        newest = [events[c][-1] for c in ids]
        if self.scores_plan is not None and not isinstance(self.scores_plan, str):
            table = scores_table(ids, s, self.bundle, now, scored_at, [e.event_id for _, e in newest])
            self._stage(table, "scores")
            boundary("scores-staged")
            write_rows(self.client, self.scores_plan, online_batch(table, self.scores_plan, timestamp="as_of"), pipe=self.pipe)
            boundary("scores-stored")
        with self.client.pipeline(transaction=False) as pipe:
            for j, (cid, (d, event)) in enumerate(zip(ids, newest)):
                pipe.xadd(self.output_stream, {
                    "customer_id": cid, "churn_probability": repr(float(s.probability[j])), "churn_prediction": int(s.prediction[j]),
                    "risk_segment": s.risk_segment[j], "model_name": self.bundle.name, "model_version": self.bundle.version,
                    "event_id": event.event_id, "event_time": d.fields.get("event_time", ""), "as_of": now.isoformat(),
                    "scored_at": scored_at.isoformat(), "features_written_at_us": self.state_written_at_us,
                })
            pipe.execute()
        boundary("published")
        done = time.time()
        for cid in ids:
            for d, _ in events[cid]:
                metrics.EVENT_TO_SCORE.observe(max(0.0, done - arrival_s(d)))
        metrics.SCORES.inc(len(ids))
        return len(ids)

    def _dead(self, d: Delivery, kind: str, reason: str, result: BatchResult) -> None:
        self.source.dead_letter(d, reason)
        result.dead += 1
        metrics.EVENTS.labels(outcome="dead").inc()
        metrics.DEAD_LETTERS.labels(reason=kind).inc()

    # ------------------------------------------------------------------ offline: staged, then flushed
    def _source_dir(self, what: str) -> Path:
        """Where a view's part files go: the account state's source directory, or the scores'."""
        return self.state_dir if what == "state" else self.scores_dir

    def _staging(self, what: str) -> Path:
        base = self._source_dir(what)
        return base.parent / f".{base.name}.staging" / self.consumer

    def _stage(self, table: pa.Table, what: str) -> None:
        """The batch's rows, durable before they are visible anywhere (a crash redoes the batch)."""
        d = self._staging(what)
        d.mkdir(parents=True, exist_ok=True)
        final = d / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        with self._lock:
            self._pending[what].append((final, table))

    def clean_leftovers(self) -> None:
        """What a killed run of this consumer left half done: staged or part files still `.tmp`
        (never renamed, so never read), and staged files its last flush had already moved."""
        for what in ("state", "scores"):
            if what == "scores" and self.scores_dir is None:
                continue
            base = self._source_dir(what)
            for tmp in [*self._staging(what).glob("*.tmp"), *base.glob(f"**/.stream-*-{self.consumer}.parquet.tmp")]:
                log.info("removing %s, left by a run killed while writing it", tmp)
                tmp.unlink(missing_ok=True)
            parts = sorted(base.glob(f"**/stream-*-{self.consumer}.parquet"), key=lambda f: f.name)  # names sort by time
            if not parts:
                continue
            meta = pq.read_schema(parts[-1]).metadata or {}
            for name in json.loads(meta.get(STAGED_KEY, b"[]")):
                (self._staging(what) / name).unlink(missing_ok=True)

    def flush(self, from_disk: bool = False) -> int:
        """Staged rows -> one part file per view in its source directory; then their staged files go.

        The rows come from memory; `from_disk` (at start-up) reads what a previous run staged.
        """
        moved = 0
        for what in ("state", "scores"):
            if what == "scores" and self.scores_dir is None:
                continue
            if from_disk:
                staged = [(f, pq.read_table(f)) for f in sorted(self._staging(what).glob("*.parquet"))]
            else:
                with self._lock:
                    staged, self._pending[what] = self._pending[what], []
            if not staged:
                continue
            table = pa.concat_tables([t for _, t in staged])
            # the part file names the staged files it holds: a run killed before it removed them
            # all does not flush them twice (clean_leftovers)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), STAGED_KEY: json.dumps([f.name for f, _ in staged])})
            stamp = f"stream-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{self.consumer}"
            if what == "state":
                target = self.state_dir / f"{stamp}.parquet"
            else:
                day = table["as_of"][0].as_py()
                target = self.scores_dir / f"as_of_date={day:%Y-%m-%d}" / f"{stamp}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            for f, _ in staged:
                f.unlink(missing_ok=True)
            moved += table.num_rows
        return moved

    def lag(self) -> None:
        lag = self.source.lag()
        if lag is not None:
            metrics.LAG.set(lag)


def repeats(state: AccountState, event: Event) -> bool:
    """Whether `event` is already in `state` (the same type at the same microsecond)."""
    if event.event_type == "payment_failed":
        return event.time_us in state.payment_failure_times_us
    if event.event_type == "ticket_opened":
        return event.time_us in state.support_ticket_times_us
    if event.event_type in SEATS_EVENTS:
        return state.seats_changed_at_us == event.time_us
    return False


def fingerprint(event: Event) -> str:
    """What an event ID stands for: a repeat of the ID with another payload is not the same event."""
    amount = "none" if event.amount is None else repr(event.amount)
    return f"customer {event.customer_id}, {event.event_type} at {event.time_us} us, amount {amount}"


def boundary(name: str) -> None:
    """A point between two effects of a batch (BOUNDARIES). With SKEWLESS_STREAM_KILL_AT=<name>
    the process kills itself there with SIGKILL: how the tests crash the real command exactly
    between two effects (in process, they replace this function)."""
    if _KILL_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)


def arrival_s(d: Delivery) -> float:
    """When the event reached the bus: the producer's `sent_at_us` when it gives one, else the entry's time."""
    sent = d.fields.get("sent_at_us")
    return int(sent) / 1e6 if sent and sent.isdigit() else d.arrived_ms / 1000.0


def state_table(states: list[AccountState], written_at: datetime) -> pa.Table:
    """State rows of the account_state source: event time = the newest event each holds, created = now."""
    rows = [s.row() | {"event_timestamp": s.newest_us, "created": int(written_at.timestamp() * 1_000_000)} for s in states]
    cols = {name: [r[name] for r in rows] for name in STATE_TYPE.names}
    arrays = {}
    for f in STATE_TYPE:
        if f.name in ("event_timestamp", "created"):
            arrays[f.name] = pa.array(cols[f.name], pa.int64()).cast(f.type)
        else:
            arrays[f.name] = pa.array(cols[f.name], f.type)
    return pa.table(arrays, schema=STATE_TYPE)


def scores_table(ids: list[int], s, bundle, as_of: datetime, scored_at: datetime, event_ids: list[int]) -> pa.Table:
    """Scores rows in the predictions schema (the churn_scores view's source), one per customer."""
    from batch.outputs import ARROW_SCHEMA

    n = len(ids)
    naive = lambda t: t.astimezone(timezone.utc).replace(tzinfo=None)  # noqa: E731  (the predictions' naive UTC)
    return pa.table({
        "customer_id": pa.array(ids, pa.int64()),
        "churn_probability": pa.array(s.probability, pa.float64()),
        "churn_prediction": pa.array(s.prediction.astype("int32"), pa.int32()),
        "risk_segment": pa.array(s.risk_segment, pa.string()),
        "model_name": pa.array([bundle.name] * n, pa.string()),
        "model_version": pa.array([bundle.version] * n, pa.string()),
        "as_of": pa.array([naive(as_of)] * n, pa.timestamp("us")),
        "scored_at": pa.array([naive(scored_at)] * n, pa.timestamp("us")),
        "run_id": pa.array([f"event:{e}" for e in event_ids], pa.string()),
        "run_kind": pa.array(["event"] * n, pa.string()),
    }, schema=ARROW_SCHEMA)


def online_batch(table: pa.Table, plan, timestamp: str = "event_timestamp") -> pa.RecordBatch:
    """The rows as the engine's writer takes them: key, event time, then the plan's features in order."""
    cols = [table["customer_id"].cast(pa.int64()), table[timestamp].cast(pa.timestamp("us", tz="UTC"))]
    cols += [table[name] for name, _ in plan.features]
    return pa.RecordBatch.from_arrays([c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in cols],
                                      names=["k", "ts", *[name for name, _ in plan.features]])
