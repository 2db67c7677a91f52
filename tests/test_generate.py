"""The synthetic sources: deterministic, realistic quirks present, labels without leakage."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pandas as pd
import pytest
from conftest import SMALL

from synthetic.generate import (
    ACTIVITY_FILE,
    LABEL_HORIZON_DAYS,
    LABELS_FILE,
    PROFILES_FILE,
    GenerateConfig,
    generate,
)


@pytest.fixture(scope="module")
def data(small_repo):
    d = small_repo / "data"
    return {
        "profiles": pd.read_parquet(d / PROFILES_FILE),
        "activity": pd.read_parquet(d / ACTIVITY_FILE),
        "labels": pd.read_parquet(d / LABELS_FILE),
    }


def test_same_seed_gives_identical_bytes(tmp_path):
    cfg = GenerateConfig(customers=300, seed=11)
    generate(cfg, tmp_path / "a")
    generate(cfg, tmp_path / "b")
    for name in (PROFILES_FILE, ACTIVITY_FILE, LABELS_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    generate(GenerateConfig(customers=300, seed=12), tmp_path / "c")
    assert (tmp_path / "a" / ACTIVITY_FILE).read_bytes() != (tmp_path / "c" / ACTIVITY_FILE).read_bytes()


def test_timestamps_are_utc_microseconds(data):
    for frame in data.values():
        for col in ("event_timestamp", "created", "signup_date", "last_active_at"):
            if col in frame:
                assert str(frame[col].dtype) == "datetime64[us, UTC]", col


def test_missing_values_present(data):
    assert data["profiles"]["region"].isna().any()
    assert data["profiles"]["seats"].isna().any()
    assert data["activity"]["active_minutes_7d"].isna().any()


def test_late_arriving_rows_present(data):
    for frame in (data["profiles"], data["activity"]):
        lag = frame["created"] - frame["event_timestamp"]
        assert (lag >= timedelta(0)).all()
        assert (lag > timedelta(days=1)).mean() > 0.01
        # the export is taken at the data's end: nothing in it arrives later than that
        assert frame["created"].max() <= SMALL.end


def test_profile_is_a_slowly_changing_dimension(data):
    prof = data["profiles"]
    changes = prof[prof["status"] == "active"].groupby("customer_id").size()
    assert (changes > 1).sum() > 10  # plan upgrades and downgrades
    assert set(prof["plan"].dropna()) >= {"basic", "pro", "business"}


def test_churned_customers_stop_producing_activity(data):
    cancelled = data["profiles"].query("status == 'cancelled'").set_index("customer_id")["event_timestamp"]
    assert len(cancelled) > 20
    act = data["activity"].join(cancelled.rename("cancelled_at"), on="customer_id", how="inner")
    # the ETL row for the day of cancellation covers activity up to the end of that day
    assert (act["event_timestamp"] <= act["cancelled_at"].dt.floor("D") + timedelta(days=1)).all()
    assert (act["last_active_at"] <= act["cancelled_at"]).all()


def test_new_customers_with_short_history(data):
    prof, labels = data["profiles"], data["labels"]
    signup = prof.groupby("customer_id")["signup_date"].first()
    first_label = labels["event_timestamp"].min()
    recent = signup[(signup > first_label - timedelta(days=14)) & (signup < first_label)]
    assert len(recent) > 5
    assert labels["customer_id"].isin(recent.index).any()


def test_unseen_categories_appear_only_after_the_label_window(data):
    prof, labels = data["profiles"], data["labels"]
    last_label = labels["event_timestamp"].max()
    for col, value in (("plan", "enterprise"), ("region", "latam")):
        rows = prof[prof[col] == value]
        assert len(rows) > 0, value
        assert (rows["event_timestamp"] > last_label).all(), value


def test_labels_follow_cancellations_and_never_the_future(data):
    prof, labels = data["profiles"], data["labels"]
    cancel = prof.query("status == 'cancelled'").groupby("customer_id")["event_timestamp"].min()
    signup = prof.groupby("customer_id")["signup_date"].first()
    lab = labels.join(cancel.rename("cancel_at"), on="customer_id").join(signup.rename("signup"), on="customer_id")
    horizon = timedelta(days=LABEL_HORIZON_DAYS)
    # a cancellation may reach the export up to 5 days late: judge labels whose horizon it covers
    lab = lab[lab["event_timestamp"] + horizon + timedelta(days=5) <= prof["created"].max()]
    assert len(lab) > 1000
    # at risk at the label time: signed up before, not cancelled yet
    assert (lab["signup"] < lab["event_timestamp"]).all()
    assert not (lab["cancel_at"] <= lab["event_timestamp"]).any()
    # churned means cancelled within the next 30 days, and only that
    in_window = (lab["cancel_at"] > lab["event_timestamp"]) & (lab["cancel_at"] <= lab["event_timestamp"] + horizon)
    assert (lab["churned"] == in_window.astype(int)).all()
    # every label has its full horizon inside the data
    assert labels["event_timestamp"].max() + horizon <= prof["event_timestamp"].max() + timedelta(days=1)
    assert 0.02 < lab["churned"].mean() < 0.2


def test_bad_input_exits_with_one_line_and_writes_nothing(tmp_path):
    cli = [sys.executable, "-m", "skewless", "generate"]
    out = tmp_path / "out"
    r = subprocess.run(cli + ["--customers", "-5", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "--customers" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    r = subprocess.run(cli + ["--customers", "50", "--out", str(blocker / "data")], capture_output=True, text=True)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_interrupted_generation_keeps_previous_files(tmp_path, monkeypatch):
    import synthetic.generate as gen

    out = tmp_path / "data"
    generate(GenerateConfig(customers=200, seed=3), out)
    def files():
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    before = files()
    assert "account_state/backfill.parquet" in before

    def boom(*args, **kwargs):
        raise RuntimeError("killed half way")

    monkeypatch.setattr(gen, "_simulate_chunk", boom)
    with pytest.raises(RuntimeError):
        generate(GenerateConfig(customers=200, seed=4), out)
    assert files() == before


ETL = """
WITH ev AS (SELECT * FROM read_parquet($events) QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY created) = 1),
act AS (SELECT * FROM read_parquet($activity)),
etl AS (
  SELECT a.customer_id, a.event_timestamp,
    count(*) FILTER (e.event_type = 'session' AND e.event_timestamp >= a.event_timestamp - INTERVAL 7 DAY) AS logins_7d,
    count(*) FILTER (e.event_type = 'session') AS logins_30d,
    CASE WHEN bool_or(e.event_type = 'telemetry_gap' AND e.event_timestamp >= a.event_timestamp - INTERVAL 1 DAY) THEN NULL
         ELSE round(coalesce(sum(e.amount) FILTER (e.event_type = 'session' AND e.event_timestamp >= a.event_timestamp - INTERVAL 7 DAY), 0), 1) END AS active_minutes_7d,
    CASE WHEN bool_or(e.event_type = 'telemetry_gap' AND e.event_timestamp >= a.event_timestamp - INTERVAL 1 DAY) THEN NULL
         ELSE round(coalesce(sum(e.amount) FILTER (e.event_type = 'session'), 0), 1) END AS active_minutes_30d,
    count(*) FILTER (e.event_type = 'ticket_opened' AND e.event_timestamp >= a.event_timestamp - INTERVAL 7 DAY) AS support_tickets_7d,
    count(*) FILTER (e.event_type = 'ticket_opened') AS support_tickets_30d,
    count(*) FILTER (e.event_type = 'payment_failed' AND e.event_timestamp >= a.event_timestamp - INTERVAL 7 DAY) AS payment_failures_7d,
    count(*) FILTER (e.event_type = 'payment_failed') AS payment_failures_30d,
    round(coalesce(sum(e.amount) FILTER (e.event_type = 'usage' AND e.event_timestamp >= a.event_timestamp - INTERVAL 7 DAY), 0), 2) AS spend_7d,
    round(coalesce(sum(e.amount) FILTER (e.event_type = 'usage'), 0), 2) AS spend_30d,
    max(e.event_timestamp) FILTER (e.event_type = 'session') AS last_active_at
  FROM act a LEFT JOIN ev e ON e.customer_id = a.customer_id AND e.event_timestamp < a.event_timestamp
       AND e.event_timestamp >= a.event_timestamp - INTERVAL 30 DAY AND e.created <= a.created
  GROUP BY ALL
)
SELECT a.* EXCLUDE (created), e.* EXCLUDE (customer_id, event_timestamp)
FROM act a JOIN etl e USING (customer_id, event_timestamp)
"""


def test_the_activity_rows_are_what_the_etl_computes_from_the_event_log(small_repo):
    """Windows of events by event time, each event once (by id), only events that had arrived when
    the ETL row was written, minutes missing on a day with a telemetry gap: every activity row, exactly."""
    import duckdb

    from synthetic.generate import EVENTS_FILE

    d = small_repo / "data"
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        both = con.execute(ETL, {"events": str(d / EVENTS_FILE), "activity": str(d / ACTIVITY_FILE)}).df()
    assert len(both) == len(pd.read_parquet(d / ACTIVITY_FILE)) > 10_000
    for name in ("logins", "active_minutes", "support_tickets", "payment_failures", "spend"):
        for w in (7, 30):
            col = f"{name}_{w}d"
            a, b = both[col], both[f"{col}_1"]
            assert ((a == b) | (a.isna() & b.isna())).all(), col
    assert (both["last_active_at"] == both["last_active_at_1"]).all()
    assert both["active_minutes_7d"].isna().sum() > 100  # the quirk is there, and explained by the log


def test_the_event_log_has_the_quirks_of_a_real_one(small_repo):
    from synthetic.generate import EVENTS_FILE

    events = pd.read_parquet(small_repo / "data" / EVENTS_FILE)
    delay = events["created"] - events["event_timestamp"]
    assert (delay > timedelta(minutes=10)).mean() > 0.02  # late
    assert events["event_id"].duplicated().sum() > 50  # the same event twice
    by_arrival = events.sort_values(["customer_id", "created"])
    assert (by_arrival.groupby("customer_id")["event_timestamp"].diff() < timedelta(0)).sum() > 100  # out of order
    assert set(events["event_type"]) >= {"session", "usage", "ticket_opened", "payment_failed", "plan_changed", "account_opened", "telemetry_gap"}


def test_the_account_state_history_is_the_consumers_fold_of_the_log(small_repo):
    """Folding the log again, by arrival, with the consumer's function gives the backfill, row for row."""
    from synthetic.generate import ACCOUNT_STATE_BACKFILL, ACCOUNT_STATE_DIR, EVENTS_FILE, account_state_history

    import pyarrow.parquet as pq

    d = small_repo / "data"
    backfill = pq.read_table(d / ACCOUNT_STATE_DIR / ACCOUNT_STATE_BACKFILL)
    assert backfill.equals(account_state_history(pq.read_table(d / EVENTS_FILE)))
    frame = backfill.to_pandas()
    assert (frame["event_timestamp"] <= frame["created"]).all() and frame["payment_failure_times_us"].map(len).max() >= 1
