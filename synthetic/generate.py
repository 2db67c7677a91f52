"""Seeded synthetic churn data for a SaaS subscription business.

Nothing can be downloaded here, so the raw sources that an upstream system would own are
simulated: customer profile snapshots (a slowly changing dimension), daily activity
aggregates as an ETL job writes them, and weekly churn labels. Churn follows a hidden daily
hazard that depends only on each customer's past, so a model can learn it. Next to each label
goes its true probability, 1 - prod(1 - hazard) over the 30 days after the label time along
the customer's simulated path: an oracle that knows the future hazards, so its AUC is a
ceiling no model that sees only the past can beat.

Quirks are on purpose, because real sources have them: missing values, late-arriving rows
(`created` later than `event_timestamp`), customers who stop producing activity after they
cancel, new customers with short history, and categories (plan `enterprise`, region `latam`)
that only appear in the last weeks, after any training window.

Behind the daily activity rows lies the raw account-event log (`account_events.parquet`): every
session (its minutes), daily usage charge, support ticket, payment failure, plan change,
signup, cancellation and telemetry gap, with an event time and an arrival time (`created`), as
the product and billing systems emit them: late (minutes to most of an hour), out of order, a
few duplicated (the same event id twice). The activity rows are exactly what the daily ETL
computes from it (tests/test_generate.py runs that ETL as SQL and compares): windows of events
by event time, duplicates dropped, minutes missing on a day with a telemetry gap. The log
starts with the 30 warm-up days, so every window is whole. From the log, the history of the
live account state (`account_state/`, what the near-real-time path keeps current) is folded
with the same function the event consumer uses (skewless/account_state.py).

Customers are simulated in fixed-size chunks with one random stream per chunk, so memory stays
bounded at 10M customers and the output depends only on the seed and the flags. The event log
has a random stream of its own, so the other sources are the same bytes with or without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from skewless.labels import LABEL_HORIZON_DAYS, LABELS_FILE  # noqa: F401  (re-exported: the files this writes)

# File names inside the data directory; feature_repo/definitions.py reads the same names.
PROFILES_FILE = "customer_profiles.parquet"
ACTIVITY_FILE = "customer_activity.parquet"
EVENTS_FILE = "account_events.parquet"
ACCOUNT_STATE_DIR = "account_state"  # a directory: the event consumer appends part files to it
ACCOUNT_STATE_BACKFILL = "backfill.parquet"
LIVE_RETENTION_US = 2 * 86_400_000_000  # the account state keeps 48 h of event times: the live windows are 24 h

DEFAULT_END = datetime(2026, 11, 1, tzinfo=timezone.utc)
CHUNK_CUSTOMERS = 50_000
WARMUP_DAYS = 30  # simulated before the first written day so 30-day windows start full
UNSEEN_CATEGORY_DAYS = 21  # `enterprise` and `latam` appear only this close to the end

PLANS = np.array(["basic", "pro", "business", "enterprise"])
PLAN_FEE_PER_SEAT = np.array([12.0, 25.0, 45.0, 80.0])
PLAN_HAZARD = np.array([0.45, 0.0, -0.35, -0.7])
REGIONS = np.array(["na", "emea", "apac", "latam"])
REGION_HAZARD = np.array([0.0, -0.1, 0.15, 0.1])
# name -> (7-day column, 30-day column); daily values are simulated, windows are sums
WINDOW_METRICS = ("logins", "active_minutes", "support_tickets", "payment_failures", "spend")

TS = pa.timestamp("us", tz="UTC")  # microseconds: DuckDB fails Feast materialization on ns tz-aware
PROFILE_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("event_timestamp", TS),
        ("created", TS),
        ("plan", pa.string()),
        ("region", pa.string()),
        ("seats", pa.int64()),
        ("monthly_fee", pa.float64()),
        ("signup_date", TS),
        ("status", pa.string()),
    ]
)
ACTIVITY_SCHEMA = pa.schema(
    [("customer_id", pa.int64()), ("event_timestamp", TS), ("created", TS)]
    + [
        (f"{m}_{w}d", pa.float64() if m in ("active_minutes", "spend") else pa.int64())
        for m in WINDOW_METRICS
        for w in (7, 30)
    ]
    + [("last_active_at", TS)]
)
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("customer_id", pa.int64()),
        ("event_timestamp", TS),
        ("created", TS),  # when it reached the event bus
        ("event_type", pa.string()),
        ("amount", pa.float64()),  # session minutes, usage USD, invoice USD, seats; null when none
    ]
)
ACCOUNT_STATE_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("event_timestamp", TS),  # the newest event the state holds
        ("created", TS),  # when that state was written
        ("live_seats", pa.int64()),
        ("seats_changed_at_us", pa.int64()),
        ("payment_failure_times_us", pa.list_(pa.int64())),
        ("support_ticket_times_us", pa.list_(pa.int64())),
        ("last_payment_failure_at_us", pa.int64()),
    ]
)
LABEL_SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("event_timestamp", TS),
        ("churned", pa.int64()),
        ("true_churn_probability", pa.float64()),
    ]
)


@dataclass(frozen=True)
class GenerateConfig:
    customers: int = 50_000
    days: int = 150
    end: datetime = DEFAULT_END
    seed: int = 7
    events: bool = True  # also the account-event log and the account state it folds into
    shift_after: datetime | None = None  # from then on churn follows another mechanism (a model decays)

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)

    def label_dates(self) -> list[datetime]:
        """Weekly label dates with a full 30-day horizon after them and 5 weeks of history."""
        first = self.start + timedelta(days=35)
        last = self.end - timedelta(days=LABEL_HORIZON_DAYS)
        dates = []
        d = first
        while d <= last:
            dates.append(d)
            d += timedelta(days=7)
        return dates


@dataclass
class GenerateSummary:
    customers: int
    profile_rows: int
    activity_rows: int
    label_rows: int
    event_rows: int
    state_rows: int
    churn_rate: float
    ceiling_auc: float
    files: dict[str, int]  # file name -> bytes


def _us(dt: datetime) -> int:
    return int(dt.timestamp() * 1_000_000)


def _ts_array(values_us: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(values_us.astype("int64"), type=pa.int64(), mask=mask).cast(TS)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC by ranks (Mann-Whitney), to avoid importing scikit-learn in the generator."""
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks for ties
    _, first_idx, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first_idx + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class _EventLog:
    """The raw events of one chunk, gathered day by day as arrays, with a random stream of its own."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.parts: list[tuple[np.ndarray, np.ndarray, str, np.ndarray | None]] = []

    def add(self, customer_ids: np.ndarray, times_us: np.ndarray, kind: str, amount: np.ndarray | None = None) -> None:
        if len(customer_ids):
            self.parts.append((np.asarray(customer_ids, np.int64), np.asarray(times_us, np.int64), kind,
                               None if amount is None else np.asarray(amount, np.float64)))

    def at_random_times(self, customer_ids: np.ndarray, day_start: int, day_us: int, kind: str, amount=None) -> None:
        self.add(customer_ids, day_start + self.rng.integers(0, day_us, len(customer_ids)), kind, amount)

    def sessions(self, customer_ids: np.ndarray, day_start: int, last_active: np.ndarray, logins: np.ndarray, minutes: np.ndarray) -> None:
        """`logins` sessions per customer, the last one at its last activity, sharing its minutes
        (in tenths, so the day's total is exact); the usage charge comes with the last session."""
        if not len(customer_ids):
            return
        group = np.repeat(np.arange(len(customer_ids)), logins)
        first = np.concatenate([[0], np.cumsum(logins)[:-1]])
        last = first + logins - 1
        times = day_start + (self.rng.random(len(group)) * (last_active[group] - day_start)).astype(np.int64)
        times[last] = last_active
        tenths = np.round(minutes * 10).astype(np.int64)
        weights = self.rng.random(len(group)) + 0.5
        weights /= np.add.reduceat(weights, first)[group]
        parts = np.floor(tenths[group] * weights).astype(np.int64)
        parts[last] = 0
        parts[last] = tenths - np.add.reduceat(parts, first)
        self.add(customer_ids[group], times, "session", parts / 10.0)

    def table(self, chunk_index: int, end_us: int) -> pa.Table:
        """The events with ids, arrival times (late, out of order, a few twice), up to the export at `end_us`."""
        if not self.parts:
            return EVENT_SCHEMA.empty_table()
        ids = np.concatenate([p[0] for p in self.parts])
        times = np.concatenate([p[1] for p in self.parts])
        kinds = np.concatenate([np.full(len(p[0]), p[2], dtype=object) for p in self.parts])
        amounts = np.concatenate([p[3] if p[3] is not None else np.full(len(p[0]), np.nan) for p in self.parts])
        has_amount = np.concatenate([np.full(len(p[0]), p[3] is not None) for p in self.parts])
        n = len(ids)
        event_ids = (np.int64(chunk_index) << 40) + np.arange(n, dtype=np.int64)
        r = self.rng.random(n)
        delay = np.where(r < 0.90, self.rng.integers(1, 61, n), np.where(r < 0.99, self.rng.integers(60, 1_800, n), self.rng.integers(1_800, 3_300, n)))
        created = times + delay * 1_000_000 + self.rng.integers(0, 1_000_000, n)
        twice = np.flatnonzero(self.rng.random(n) < 0.003)  # the producer retried: the same event again, a little later
        order = np.concatenate([np.arange(n), twice])
        created = np.concatenate([created, created[twice] + self.rng.integers(1, 120, len(twice)) * 1_000_000])
        keep = created <= end_us
        order, created = order[keep], created[keep]
        sort = np.lexsort((event_ids[order], created))  # the log in arrival order
        order, created = order[sort], created[sort]
        return pa.table(
            {
                "event_id": pa.array(event_ids[order], pa.int64()),
                "customer_id": pa.array(ids[order], pa.int64()),
                "event_timestamp": _ts_array(times[order]),
                "created": _ts_array(created),
                "event_type": pa.array(kinds[order].astype(str)),
                "amount": pa.array(amounts[order], pa.float64(), mask=~has_amount[order]),
            },
            schema=EVENT_SCHEMA,
        )


def _simulate_chunk(cfg: GenerateConfig, chunk_index: int, first_id: int, n: int):
    """Simulate `n` customers day by day; return (profiles, activity, labels, events) Arrow tables."""
    rng = np.random.default_rng([cfg.seed, chunk_index])
    log = _EventLog(np.random.default_rng([cfg.seed, chunk_index, 1])) if cfg.events else None
    day_us = 86_400_000_000
    start_us = _us(cfg.start)
    shift_us = None if cfg.shift_after is None else _us(cfg.shift_after)
    sim_start_us = start_us - WARMUP_DAYS * day_us
    total_days = cfg.days + WARMUP_DAYS
    unseen_from_day = total_days - UNSEEN_CATEGORY_DAYS
    label_days = {
        WARMUP_DAYS + (d - cfg.start).days: _us(d) for d in cfg.label_dates()
    }  # sim-day index (label at the start of that day) -> label timestamp
    ids = np.arange(first_id, first_id + n, dtype=np.int64)

    # Who exists when: 70% predate the simulation (tenure up to 3 years), 30% sign up during it.
    existing = rng.random(n) < 0.7
    signup_day = np.where(
        existing,
        -rng.integers(0, 3 * 365, n),
        rng.integers(0, total_days, n),
    )
    signup_us = sim_start_us + signup_day * day_us + rng.integers(0, day_us, n)
    plan = rng.choice(3, n, p=[0.5, 0.35, 0.15])
    region = rng.choice(3, n, p=[0.45, 0.35, 0.2])
    late_signup = signup_day >= unseen_from_day
    region = np.where(late_signup & (rng.random(n) < 0.3), 3, region)  # unseen `latam`
    seats = np.maximum(1, rng.lognormal(1.0 + 0.6 * plan, 0.7)).astype(np.int64)
    engagement = rng.normal(-1.3, 0.9, n)  # logit of the daily probability of being active
    frailty = rng.normal(0.0, 0.2, n)  # hidden, so a model cannot reach the ceiling exactly
    # `exists` customers are simulated every day, even after they cancel (a counterfactual
    # path that is never written), so the true 30-day probability of every label is known.
    exists = signup_day < 0  # signed up before the simulation
    alive = exists.copy()  # exists and has not cancelled
    churned = np.zeros(n, dtype=bool)
    churn_us = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    last_active_us = np.where(alive, signup_us, 0).astype(np.int64)
    ring = np.zeros((len(WINDOW_METRICS), 30, n), dtype=np.float64)

    prof_rows: list[dict[str, np.ndarray]] = []
    act_rows: list[dict[str, np.ndarray]] = []
    label_rows: list[tuple[np.ndarray, int, np.ndarray]] = []  # (ids mask, ts, hazard)
    pending_labels: list[tuple[np.ndarray, int, int, np.ndarray]] = []  # (at risk, ts, day, log survival)

    def snapshot(mask: np.ndarray, ts_us: np.ndarray, status: str) -> None:
        k = int(mask.sum())
        if k == 0:
            return
        late = rng.random(k) < 0.03
        delay = np.where(late, rng.integers(1, 6, k) * day_us, rng.integers(60, 3_600, k) * 1_000_000)
        fee = PLAN_FEE_PER_SEAT[plan[mask]] * seats[mask]
        prof_rows.append(
            {
                "customer_id": ids[mask],
                "event_timestamp": ts_us,
                "created": ts_us + delay,
                "plan": plan[mask].copy(),
                "region": region[mask].copy(),
                "region_missing": rng.random(k) < 0.02,
                "seats": seats[mask].copy(),
                "seats_missing": rng.random(k) < 0.01,
                "monthly_fee": np.round(fee, 2),
                "signup_date": signup_us[mask],
                "status": np.full(k, status),
            }
        )

    # Customers that predate the simulation get their signup snapshot up front.
    snapshot(alive, signup_us[alive], "active")

    for day in range(total_days):
        day_start = sim_start_us + day * day_us
        if day in label_days:
            # Labels are taken at 00:00, before anything of this day happens.
            ts = label_days[day]
            at_risk = alive & (signup_us < ts)
            pending_labels.append((at_risk, ts, day, np.zeros(n)))
        slot = day % 30
        ring[:, slot, :] = 0.0

        # New signups today.
        new = (~exists) & (signup_day == day)
        if new.any():
            exists |= new
            alive |= new
            last_active_us[new] = signup_us[new]
            snapshot(new, signup_us[new], "active")
            if log:
                log.add(ids[new], signup_us[new], "account_opened", seats[new])

        # Plan changes: upgrades (and the unseen `enterprise` tier near the end), downgrades.
        p_up = 0.0015 if day < unseen_from_day else 0.004
        change = exists & (rng.random(n) < p_up + 0.0005)
        if change.any():
            up = rng.random(n) < p_up / (p_up + 0.0005)
            top = 3 if day >= unseen_from_day else 2
            plan = np.where(change & up, np.minimum(plan + 1, top), plan)
            plan = np.where(change & ~up, np.maximum(plan - 1, 0), plan)
            seats = np.where(change & up, seats + rng.integers(0, 4, n), seats)
            written = change & alive
            changed_at = day_start + rng.integers(0, day_us, int(written.sum()))
            snapshot(written, changed_at, "active")
            if log:
                log.add(ids[written], changed_at, "plan_changed", seats[written])

        # Engagement drifts; a payment failure or a bad week pushes it down.
        engagement = np.where(exists, engagement + rng.normal(-0.004, 0.1, n), engagement)
        tenure_days = (day_start - signup_us) / day_us
        p_active = 1.0 / (1.0 + np.exp(-engagement))
        active = exists & (rng.random(n) < p_active)
        logins = np.where(active, 1 + rng.poisson(2.0 * p_active + 0.5), 0)
        minutes = np.where(active, np.round(rng.gamma(2.0, 15.0, n) * logins, 1), 0.0)
        tickets = np.where(exists & (rng.random(n) < 0.01 + 0.03 * (1 - p_active)), 1, 0)
        failures = np.where(exists & (rng.random(n) < 0.006), 1, 0)
        engagement = engagement - 0.4 * failures - 0.2 * tickets
        spend = np.where(active, np.round(minutes * 0.02 * (1 + plan), 2), 0.0)
        for i, daily in enumerate((logins, minutes, tickets, failures, spend)):
            ring[i, slot, :] = daily
        last_active_us = np.where(active, day_start + rng.integers(0, day_us, n), last_active_us)
        if log:
            on = alive & active
            log.sessions(ids[on], day_start, last_active_us[on], logins[on], minutes[on])
            log.add(ids[on], last_active_us[on], "usage", spend[on])
            log.at_random_times(ids[alive & (tickets > 0)], day_start, day_us, "ticket_opened")
            failed = alive & (failures > 0)
            log.at_random_times(ids[failed], day_start, day_us, "payment_failed", PLAN_FEE_PER_SEAT[plan[failed]] * seats[failed])

        # The hidden daily hazard: a function of the past only.
        w7 = [ring[i, [(day - k) % 30 for k in range(7)], :].sum(axis=0) for i in range(5)]
        w30 = [ring[i].sum(axis=0) for i in range(5)]
        logit = (
            -7.1
            + 3.0 * ((w30[3] > 0) & (plan == 0))  # a failed payment only drives off the cheapest plan
            - 0.8 * (plan == 0)
            + 1.0 * (w30[2] >= 2)  # repeated support tickets, not the first one
            + 0.8 * (p_active < 0.08)  # disengaged accounts are a cliff, not a slope
            + PLAN_HAZARD[plan]
            + REGION_HAZARD[region]
            + 0.5 * (tenure_days < 45)  # new accounts churn while onboarding
            + 1.6 * ((seats <= 1) & (plan >= 1))  # a lone seat on a paid tier is an abandoned trial
            + frailty
        )
        if shift_us is not None and day_start >= shift_us:
            # another mechanism (a competitor courts busy accounts; failed payments are retried
            # and forgotten): what a model learned before no longer ranks customers
            logit = (-5.6 + 1.8 * (p_active >= 0.2) - 1.2 * (w30[3] > 0) - 0.8 * (tenure_days < 45)
                     - REGION_HAZARD[region] - PLAN_HAZARD[plan] + frailty)
        hazard = 1.0 / (1.0 + np.exp(-logit))
        for _, _, label_day, log_survival in pending_labels:
            if label_day <= day < label_day + LABEL_HORIZON_DAYS:
                log_survival += np.log1p(-hazard)

        # Emit the ETL row (event time = end of day) for customers active within 30 days.
        if day >= WARMUP_DAYS:
            emit = alive & active
            k = int(emit.sum())
            if k:
                end_of_day = day_start + day_us
                late = rng.random(k) < 0.03
                delay = np.where(late, rng.integers(1, 5, k) * day_us, rng.integers(1, 4, k) * 3_600_000_000)
                row = {
                    "customer_id": ids[emit],
                    "event_timestamp": np.full(k, end_of_day),
                    "created": end_of_day + delay,
                    "last_active_at": last_active_us[emit],
                    "minutes_missing": rng.random(k) < 0.03,
                }
                if log:  # the reason an ETL row has no minutes: the day's usage telemetry had a gap
                    log.at_random_times(ids[emit][row["minutes_missing"]], day_start, day_us, "telemetry_gap")
                for i, m in enumerate(WINDOW_METRICS):
                    row[f"{m}_7d"] = w7[i][emit]
                    row[f"{m}_30d"] = w30[i][emit]
                act_rows.append(row)

        # Churn happens during the day: the customer cancels and produces nothing after.
        churn_now = alive & (rng.random(n) < hazard)
        if churn_now.any():
            # cancelled after the day's last activity, before the day ends
            t = np.minimum(np.maximum(day_start + rng.integers(0, day_us, n), last_active_us + 1_000_000), day_start + day_us - 1)
            churn_us = np.where(churn_now, t, churn_us)
            alive &= ~churn_now
            churned |= churn_now
            snapshot(churn_now, t[churn_now], "cancelled")
            if log:
                log.add(ids[churn_now], t[churn_now], "account_cancelled")

    for at_risk, ts, _, log_survival in pending_labels:
        prob = 1.0 - np.exp(log_survival)  # P(cancel within 30 days | the hidden hazard path)
        horizon_end = ts + LABEL_HORIZON_DAYS * day_us
        y = (churn_us > ts) & (churn_us <= horizon_end)
        label_rows.append((at_risk, ts, np.stack([y[at_risk].astype(np.int64), prob[at_risk]])))

    prof, act, labels = _to_tables(ids, prof_rows, act_rows, label_rows)
    # The export happens at `end`: rows that would arrive later are not in it yet.
    end = pa.scalar(_us(cfg.end), pa.int64()).cast(TS)
    events = log.table(chunk_index, _us(cfg.end)) if log else EVENT_SCHEMA.empty_table()
    return prof.filter(pc.less_equal(prof["created"], end)), act.filter(pc.less_equal(act["created"], end)), labels, events


def _concat(rows: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    return np.concatenate([r[key] for r in rows]) if rows else np.array([])


def _to_tables(ids, prof_rows, act_rows, label_rows):
    if prof_rows:
        prof = pa.table(
            {
                "customer_id": pa.array(_concat(prof_rows, "customer_id"), pa.int64()),
                "event_timestamp": _ts_array(_concat(prof_rows, "event_timestamp")),
                "created": _ts_array(_concat(prof_rows, "created")),
                "plan": pa.array(PLANS[_concat(prof_rows, "plan").astype(int)]),
                "region": pa.array(
                    REGIONS[_concat(prof_rows, "region").astype(int)],
                    mask=_concat(prof_rows, "region_missing").astype(bool),
                ),
                "seats": pa.array(
                    _concat(prof_rows, "seats").astype(np.int64),
                    mask=_concat(prof_rows, "seats_missing").astype(bool),
                ),
                "monthly_fee": pa.array(_concat(prof_rows, "monthly_fee"), pa.float64()),
                "signup_date": _ts_array(_concat(prof_rows, "signup_date")),
                "status": pa.array(_concat(prof_rows, "status").astype(str)),
            },
            schema=PROFILE_SCHEMA,
        )
    else:
        prof = PROFILE_SCHEMA.empty_table()
    if act_rows:
        cols: dict[str, pa.Array] = {
            "customer_id": pa.array(_concat(act_rows, "customer_id"), pa.int64()),
            "event_timestamp": _ts_array(_concat(act_rows, "event_timestamp")),
            "created": _ts_array(_concat(act_rows, "created")),
        }
        minutes_missing = _concat(act_rows, "minutes_missing").astype(bool)
        for m in WINDOW_METRICS:
            for w in (7, 30):
                name = f"{m}_{w}d"
                values = _concat(act_rows, name)
                if m == "active_minutes":
                    cols[name] = pa.array(np.round(values, 1), pa.float64(), mask=minutes_missing)
                elif m == "spend":
                    cols[name] = pa.array(np.round(values, 2), pa.float64())
                else:
                    cols[name] = pa.array(values.astype(np.int64), pa.int64())
        cols["last_active_at"] = _ts_array(_concat(act_rows, "last_active_at"))
        act = pa.table(cols, schema=ACTIVITY_SCHEMA)
    else:
        act = ACTIVITY_SCHEMA.empty_table()
    lab_parts = []
    for at_risk, ts, yp in label_rows:
        k = int(at_risk.sum())
        lab_parts.append(
            pa.table(
                {
                    "customer_id": pa.array(ids[at_risk], pa.int64()),
                    "event_timestamp": _ts_array(np.full(k, ts)),
                    "churned": pa.array(yp[0].astype(np.int64)),
                    "true_churn_probability": pa.array(yp[1], pa.float64()),
                },
                schema=LABEL_SCHEMA,
            )
        )
    labels = pa.concat_tables(lab_parts) if lab_parts else LABEL_SCHEMA.empty_table()
    return prof, act, labels


def account_state_history(events: pa.Table) -> pa.Table:
    """The account state after each event that changed it, folded in arrival order by the event
    consumer's own function (skewless/account_state.py): what the consumer would have written had it run
    all along, each state written when its event arrived."""
    from skewless.account_state import STATE_EVENTS, Event, fold

    live = events.filter(pc.is_in(events["event_type"], pa.array(STATE_EVENTS)))
    cols = {name: live[name].to_pylist() for name in ("event_id", "customer_id", "event_type", "amount")}
    times = live["event_timestamp"].cast(pa.int64()).to_numpy()
    arrived = live["created"].cast(pa.int64()).to_numpy()
    stream = [Event(e, c, k, int(t), a) for e, c, k, a, t in zip(cols["event_id"], cols["customer_id"], cols["event_type"], cols["amount"], times)]
    at = {id(event): int(a) for event, a in zip(stream, arrived)}
    changed = fold({}, stream, LIVE_RETENTION_US)
    if not changed:
        return ACCOUNT_STATE_SCHEMA.empty_table()
    rows = [state.row() | {"event_timestamp": state.newest_us, "created": at[id(event)]} for state, event in changed]
    table = pa.Table.from_pylist(rows)
    return pa.table({name: table[name].cast(pa.int64()).cast(TS) if name in ("event_timestamp", "created") else table[name].cast(ACCOUNT_STATE_SCHEMA.field(name).type)
                     for name in ACCOUNT_STATE_SCHEMA.names}, schema=ACCOUNT_STATE_SCHEMA)


def generate(cfg: GenerateConfig, out_dir: Path, progress=None) -> GenerateSummary:
    """Write the Parquet sources into `out_dir`, atomically.

    Everything is written into a temporary directory beside `out_dir` and each file is
    renamed into place only after all of them are complete, so a failed or interrupted run
    leaves the previous files untouched and no half-written Parquet behind. The account-state
    directory is replaced whole: part files an event consumer appended to the old data go with it.
    """
    if cfg.customers <= 0:
        raise ValueError(f"--customers must be a positive number, got {cfg.customers}")
    if cfg.days < 70:
        raise ValueError(f"--days must be at least 70 (5 weeks of history + 30-day horizon), got {cfg.days}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".generate-", dir=out_dir))
    try:
        writers = {
            PROFILES_FILE: pq.ParquetWriter(tmp / PROFILES_FILE, PROFILE_SCHEMA),
            ACTIVITY_FILE: pq.ParquetWriter(tmp / ACTIVITY_FILE, ACTIVITY_SCHEMA),
            LABELS_FILE: pq.ParquetWriter(tmp / LABELS_FILE, LABEL_SCHEMA),
        }
        state_file = tmp / ACCOUNT_STATE_DIR / ACCOUNT_STATE_BACKFILL
        if cfg.events:
            writers[EVENTS_FILE] = pq.ParquetWriter(tmp / EVENTS_FILE, EVENT_SCHEMA)
            state_file.parent.mkdir()
            writers[ACCOUNT_STATE_DIR] = pq.ParquetWriter(state_file, ACCOUNT_STATE_SCHEMA)
        counts = dict.fromkeys(writers, 0)
        churn_sum = 0
        scores, ys = [], []
        try:
            n_chunks = (cfg.customers + CHUNK_CUSTOMERS - 1) // CHUNK_CUSTOMERS
            for c in range(n_chunks):
                first = c * CHUNK_CUSTOMERS
                n = min(CHUNK_CUSTOMERS, cfg.customers - first)
                tables = _simulate_chunk(cfg, c, first + 1, n)
                if cfg.events:
                    tables = (*tables, account_state_history(tables[3]))
                for name, table in zip(writers, tables):
                    if table.num_rows:
                        writers[name].write_table(table)
                    counts[name] += table.num_rows
                labels = tables[2]
                y = labels.column("churned").to_numpy()
                churn_sum += int(y.sum())
                # keep a bounded sample for the ceiling AUC
                keep = slice(0, min(len(y), 200_000 // max(n_chunks, 1) + 1))
                ys.append(y[keep])
                scores.append(labels.column("true_churn_probability").to_numpy()[keep])
                if progress:
                    progress(n)
        finally:
            for w in writers.values():
                w.close()
        for name in writers:
            if name == ACCOUNT_STATE_DIR:
                old = out_dir / ACCOUNT_STATE_DIR
                if old.exists():
                    os.replace(old, tmp / ".old-account-state")  # removed with tmp below
                os.replace(state_file.parent, old)
                # what an event consumer staged for the old data must not reach the new
                shutil.rmtree(out_dir / f".{ACCOUNT_STATE_DIR}.staging", ignore_errors=True)
            else:
                os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    y_all = np.concatenate(ys) if ys else np.array([])
    s_all = np.concatenate(scores) if scores else np.array([])
    return GenerateSummary(
        customers=cfg.customers,
        profile_rows=counts[PROFILES_FILE],
        activity_rows=counts[ACTIVITY_FILE],
        label_rows=counts[LABELS_FILE],
        event_rows=counts.get(EVENTS_FILE, 0),
        state_rows=counts.get(ACCOUNT_STATE_DIR, 0),
        churn_rate=churn_sum / max(counts[LABELS_FILE], 1),
        ceiling_auc=_auc(s_all, y_all),
        files={name: (out_dir / name).stat().st_size if name != ACCOUNT_STATE_DIR else (out_dir / name / ACCOUNT_STATE_BACKFILL).stat().st_size
               for name in writers},
    )
