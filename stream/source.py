"""Where account events come from: one small interface, and its Redis Streams implementation.

The consumer (stream/consumer.py) sees only `EventSource`: read a batch, acknowledge what is
done, take back what a crashed consumer left unacknowledged, set a bad entry aside. Redis
Streams is the embedded default, since the project already runs Redis:

- a consumer group (`XREADGROUP`): each entry goes to one consumer, at least once; an entry
  is acknowledged (`XACK`) only after its effects are durable, so a crash redelivers it;
- entries a dead consumer left pending are claimed back after `min_idle_ms` (`XAUTOCLAIM`);
- `replay_from` moves the group back to an entry ID or a time (`XGROUP SETID`); the consumer
  tells replays from first deliveries by the highest ID it has acknowledged before;
- dead letters go to a stream of their own, with the reason and the original fields.

A Kafka topic would plug in behind the same interface with a well-kept client
(confluent-kafka): the group's committed offsets are the acknowledgement (commit after the
batch is durable), partitions keyed by customer ID keep one customer's events in order on one
consumer (which the state's read-modify-write needs), a rebalance hands a dead consumer's
partitions over (no claiming), replay is `offsets_for_times` and a seek, and dead letters are
a topic. Nothing else in the consumer changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

EVENTS_STREAM = "skewless:events"
SCORES_STREAM = "skewless:scores"
DEAD_STREAM = "skewless:events:dead"
GROUP = "skewless-stream"


@dataclass(frozen=True)
class Delivery:
    """One entry as read: its stream ID, its fields, and whether it was delivered before."""

    entry_id: str
    fields: dict[str, str]
    redelivered: bool  # claimed back from a dead consumer, or replayed: its effects may be there already

    @property
    def arrived_ms(self) -> int:
        """When it reached the bus (Redis stamps the entry ID with the time of XADD, in ms)."""
        return int(self.entry_id.split("-", 1)[0])


class EventSource(Protocol):
    def read(self, count: int, block_ms: int) -> list[Delivery]: ...
    def ack(self, deliveries: list[Delivery]) -> None: ...
    def dead_letter(self, delivery: Delivery, reason: str) -> None: ...
    def lag(self) -> int | None: ...


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RedisStreamSource:
    """A consumer in a Redis Streams consumer group (see the module docstring)."""

    def __init__(self, client, consumer: str, stream: str = EVENTS_STREAM, group: str = GROUP,
                 dead: str = DEAD_STREAM, min_idle_ms: int = 30_000):
        self.client, self.consumer, self.stream, self.group, self.dead = client, consumer, stream, group, dead
        self.min_idle_ms = min_idle_ms
        self.high_water_key = f"{stream}:acked:{group}"  # the highest entry ID this group acknowledged
        self._claim_at = 0.0
        self.ensure_group()

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: it exists
            if "BUSYGROUP" not in str(exc):
                raise

    def _high_water(self) -> tuple[int, int]:
        raw = self.client.get(self.high_water_key)
        return _entry_key(raw.decode()) if raw else (-1, -1)

    def _deliveries(self, entries, claimed: bool) -> list[Delivery]:
        high = self._high_water()
        out = []
        for entry_id, fields in entries or []:
            if fields is None:
                continue  # trimmed from the stream while pending
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            decoded = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}
            out.append(Delivery(eid, decoded, claimed or _entry_key(eid) <= high))
        return out

    def read(self, count: int, block_ms: int) -> list[Delivery]:
        """Pending entries of dead consumers first (checked every few seconds), then new ones."""
        now = time.monotonic()
        if now >= self._claim_at:
            self._claim_at = now + max(self.min_idle_ms / 1000 / 2, 1.0)
            _, claimed, *_ = self.client.xautoclaim(self.stream, self.group, self.consumer, self.min_idle_ms, "0-0", count=count)
            if claimed:
                return self._deliveries(claimed, claimed=True)
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        return self._deliveries(reply[0][1] if reply else [], claimed=False)

    def pending_of_mine(self, count: int) -> list[Delivery]:
        """What this consumer read and did not acknowledge before it stopped (its own restart)."""
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
        return self._deliveries(reply[0][1] if reply else [], claimed=True)

    def ack(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        ids = [d.entry_id for d in deliveries]
        newest = max(ids, key=_entry_key)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.xack(self.stream, self.group, *ids)
            # the high-water mark only moves forward (a replay re-reads below it)
            pipe.eval("local cur = redis.call('GET', KEYS[1]) "
                      "if not cur then redis.call('SET', KEYS[1], ARGV[1]) return 1 end "
                      "local a, b = string.match(cur, '(%d+)-(%d+)') local c, d = string.match(ARGV[1], '(%d+)-(%d+)') "
                      "if tonumber(c) > tonumber(a) or (tonumber(c) == tonumber(a) and tonumber(d) > tonumber(b)) then "
                      "redis.call('SET', KEYS[1], ARGV[1]) end return 0", 1, self.high_water_key, newest)
            pipe.execute()

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.client.xadd(self.dead, {"reason": reason, "entry_id": delivery.entry_id, **delivery.fields})

    def lag(self) -> int | None:
        """Entries in the stream not yet delivered to the group (Redis 7), or None when unknown."""
        for g in self.client.xinfo_groups(self.stream):
            name = g.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.group:
                lag = g.get("lag")
                return int(lag) if lag is not None else None
        return None


def replay_from(client, start: str, stream: str = EVENTS_STREAM, group: str = GROUP) -> str:
    """Move the group back so the next reads start at `start` (an entry ID, or a time as ms since the epoch), included."""
    ms, seq = _entry_key(start if "-" in start else f"{int(start)}-0")
    entry = f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-18446744073709551615"
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except Exception as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    client.xgroup_setid(stream, group, entry)
    return entry
