"""The live account state an event changes: the one function the event consumer and the backfill share.

Account events (payment failures, support tickets, plan and seat changes) change a small state
per customer, which the `account_state` feature view holds (feature_repo/): the times of recent
payment failures and support tickets, the seats now, the last payment failure. Windowed values
("payment failures in the last 24 hours") are not computed here: the `account_live` on-demand
view computes them from this state relative to the request time, once, for every path. This
module only folds events into the state, by rules that make the result independent of arrival
order and of repeats:

- times are kept in microseconds, per type, sorted; an event whose (type, time) is already in
  the state is a repeat and changes nothing, so re-applying a batch after a crash is harmless;
- an older event arriving after a newer one is inserted where it belongs (a count in a window
  sees it), and never overwrites a newer seats value;
- lists keep `retention` before the newest event the state holds: every window the on-demand
  view counts ends at or after that newest event, so nothing it needs is ever trimmed.

`generate` folds the whole historical event log into the state's history (the offline source
training reads); `skewless stream` folds each batch of live events into the current state.
`parse` reads an event from a bus entry: the schema the consumer checks (a bad entry is
dead-lettered) and `skewless stream publish` checks before sending.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

PAYMENT_FAILED = "payment_failed"
TICKET_OPENED = "ticket_opened"
SEATS_EVENTS = ("account_opened", "plan_changed")  # `amount` is the seats from then on
STATE_EVENTS = (PAYMENT_FAILED, TICKET_OPENED, *SEATS_EVENTS)
# Every event type the log has; the ones not in STATE_EVENTS reach the daily ETL, not the live state.
EVENT_TYPES = (*STATE_EVENTS, "session", "usage", "telemetry_gap", "account_cancelled")
FUTURE_SKEW_S = 60.0  # an event time this far past the consumer's clock is refused (dead-lettered; not sent by publish)
FIELDS = ("live_seats", "seats_changed_at_us", "payment_failure_times_us", "support_ticket_times_us", "last_payment_failure_at_us")


@dataclass(frozen=True)
class Event:
    event_id: int
    customer_id: int
    event_type: str
    time_us: int  # event time, microseconds since the epoch (UTC)
    amount: float | None = None


@dataclass(frozen=True)
class AccountState:
    customer_id: int
    live_seats: int | None = None
    seats_changed_at_us: int | None = None
    payment_failure_times_us: tuple[int, ...] = field(default_factory=tuple)
    support_ticket_times_us: tuple[int, ...] = field(default_factory=tuple)
    last_payment_failure_at_us: int | None = None

    @property
    def newest_us(self) -> int | None:
        """The newest event time the state holds: the state row's event time."""
        times = [t for t in (self.seats_changed_at_us, self.last_payment_failure_at_us) if t is not None]
        times += self.payment_failure_times_us[-1:] + self.support_ticket_times_us[-1:]
        return max(times) if times else None

    def row(self) -> dict:
        """The state as a row of the feature view's source (lists as lists)."""
        return {"customer_id": self.customer_id, "live_seats": self.live_seats, "seats_changed_at_us": self.seats_changed_at_us,
                "payment_failure_times_us": list(self.payment_failure_times_us),
                "support_ticket_times_us": list(self.support_ticket_times_us),
                "last_payment_failure_at_us": self.last_payment_failure_at_us}

    @classmethod
    def from_values(cls, customer_id: int, values: dict) -> "AccountState":
        """A state from the view's stored values (None where the customer has no state yet)."""
        return cls(customer_id, values.get("live_seats"), values.get("seats_changed_at_us"),
                   tuple(values.get("payment_failure_times_us") or ()), tuple(values.get("support_ticket_times_us") or ()),
                   values.get("last_payment_failure_at_us"))


def _insert(times: tuple[int, ...], t: int) -> tuple[int, ...] | None:
    """`times` with `t` inserted in order; None when `t` is already there (a repeat)."""
    at = bisect.bisect_left(times, t)
    if at < len(times) and times[at] == t:
        return None
    return times[:at] + (t,) + times[at:]


def apply(state: AccountState, event: Event, retention_us: int) -> AccountState | None:
    """The state after `event`, or None when the event changes nothing (a repeat, an older seats
    value, a type the live state does not hold)."""
    kind, t = event.event_type, event.time_us
    if kind in (PAYMENT_FAILED, TICKET_OPENED):
        name = "payment_failure_times_us" if kind == PAYMENT_FAILED else "support_ticket_times_us"
        times = _insert(getattr(state, name), t)
        if times is None:
            return None
        new = replace(state, **{name: times})
        if kind == PAYMENT_FAILED:
            new = replace(new, last_payment_failure_at_us=max(t, state.last_payment_failure_at_us or t))
    elif kind in SEATS_EVENTS:
        if state.seats_changed_at_us is not None and t <= state.seats_changed_at_us:
            return None  # the same change again, or an older one: the newer seats stand
        if event.amount is None:
            return None
        new = replace(state, live_seats=int(event.amount), seats_changed_at_us=t)
    else:
        return None
    floor = new.newest_us - retention_us
    return replace(new, payment_failure_times_us=tuple(x for x in new.payment_failure_times_us if x >= floor),
                   support_ticket_times_us=tuple(x for x in new.support_ticket_times_us if x >= floor))


def fold(states: dict[int, AccountState], events: Iterable[Event], retention_us: int) -> list[tuple[AccountState, Event]]:
    """Apply `events` in the given (arrival) order; return each changed state with the event that changed it.

    `states` (customer ID -> current state) is updated in place; a customer without one starts empty.
    """
    changed = []
    for event in events:
        current = states.get(event.customer_id) or AccountState(event.customer_id)
        new = apply(current, event, retention_us)
        if new is not None:
            states[event.customer_id] = new
            changed.append((new, event))
    return changed


class BadEvent(ValueError):
    """An entry that cannot be applied; the message is the dead letter's reason."""


def parse(fields: dict[str, str]) -> Event:
    """An event from a stream entry's fields, or BadEvent naming what is wrong."""
    try:
        event_id, customer_id = int(fields["event_id"]), int(fields["customer_id"])
        kind = fields["event_type"]
        when = datetime.fromisoformat(fields["event_time"])
    except KeyError as exc:
        raise BadEvent(f"schema: missing field {exc.args[0]!r} (event_id, customer_id, event_type, event_time are required)") from None
    except ValueError as exc:
        raise BadEvent(f"schema: {exc}") from None
    if customer_id < 0 or customer_id > 2**63 - 1:
        raise BadEvent(f"schema: customer_id {customer_id} is outside 0..2^63-1")
    if kind not in EVENT_TYPES:
        raise BadEvent(f"schema: unknown event_type {kind!r} (one of {', '.join(EVENT_TYPES)})")
    amount = fields.get("amount")
    try:
        value = None if amount in (None, "") else float(amount)
    except ValueError:
        raise BadEvent(f"schema: amount {amount!r} is not a number") from None
    if value is not None and not math.isfinite(value):  # int(inf) would raise past the dead-letter path: a poison entry
        raise BadEvent(f"schema: amount {amount!r} is not a finite number")
    if kind in SEATS_EVENTS and (value is None or value < 0 or value != int(value)):
        raise BadEvent(f"schema: {kind} needs the seats as a whole amount, got {'none' if amount is None else repr(amount)}")
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return Event(event_id, customer_id, kind, _micros(when), value)


def _micros(t: datetime) -> int:
    """Microseconds since the epoch, exactly (a float timestamp would round them)."""
    return int(t.replace(microsecond=0).timestamp()) * 1_000_000 + t.microsecond
