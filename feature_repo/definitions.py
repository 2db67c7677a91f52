"""Feature definitions for skewless: the single contract shared by training, batch and online.

Plain declarations in the style of Feast's templates. Anything derived from raw columns lives
here, in the on-demand feature view, so no path can compute it a second way.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource
from feast.data_format import ParquetFormat
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float64, Int32, Int64, String, UnixTimestamp
from feast.value_type import ValueType

DATA = Path(__file__).parent / "data"
PREDICTIONS = Path(__file__).parent.parent / "data" / "predictions" / "churn_predictions"  # where `skewless score` writes
OWNER = "ml-platform@skewless.dev"
TAGS = {"team": "ml-platform", "domain": "churn"}
# `cadence`: how often a view's source gets new rows, so how often it is materialized. The
# online copy counts as stale (the service's /ready is 503) once it is older than one cadence
# and a day: a run missed or a day late.
DAILY = {**TAGS, "cadence": "1d"}

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A paying account of the SaaS product.",
    owner=OWNER,
    tags=TAGS,
)

profiles_source = FileSource(
    name="customer_profiles_source",
    path=str(DATA / "customer_profiles.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Profile snapshots from the billing system, one row per change (SCD type 2).",
    owner=OWNER,
    tags=TAGS,
)

activity_source = FileSource(
    name="customer_activity_source",
    path=str(DATA / "customer_activity.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Daily 7- and 30-day activity windows written by the product-analytics ETL.",
    owner=OWNER,
    tags=TAGS,
)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(days=3650),  # a snapshot holds until the next change, however old
    schema=[
        Field(name="plan", dtype=String, description="Subscription tier."),
        Field(name="region", dtype=String, description="Sales region; may be missing."),
        Field(name="seats", dtype=Int64, description="Licensed seats; may be missing."),
        Field(name="monthly_fee", dtype=Float64, description="Monthly bill in USD."),
        Field(name="signup_date", dtype=UnixTimestamp, description="When the account signed up."),
        Field(name="status", dtype=String, description="active or cancelled."),
    ],
    source=profiles_source,
    online=True,
    description="Latest billing profile of each customer.",
    owner=OWNER,
    tags=DAILY,
)

customer_activity = FeatureView(
    name="customer_activity",
    entities=[customer],
    ttl=timedelta(days=30),  # older than the longest window: the aggregates no longer hold
    schema=[
        Field(name="logins_7d", dtype=Int64, description="Logins in the last 7 days."),
        Field(name="logins_30d", dtype=Int64, description="Logins in the last 30 days."),
        Field(name="active_minutes_7d", dtype=Float64, description="Active minutes, 7 days; may be missing."),
        Field(name="active_minutes_30d", dtype=Float64, description="Active minutes, 30 days; may be missing."),
        Field(name="support_tickets_7d", dtype=Int64, description="Support tickets opened, 7 days."),
        Field(name="support_tickets_30d", dtype=Int64, description="Support tickets opened, 30 days."),
        Field(name="payment_failures_7d", dtype=Int64, description="Failed payments, 7 days."),
        Field(name="payment_failures_30d", dtype=Int64, description="Failed payments, 30 days."),
        Field(name="spend_7d", dtype=Float64, description="Usage spend in USD, 7 days."),
        Field(name="spend_30d", dtype=Float64, description="Usage spend in USD, 30 days."),
        Field(name="last_active_at", dtype=UnixTimestamp, description="Last time the customer was active."),
    ],
    source=activity_source,
    online=True,
    description="Product usage of each customer as of the ETL's last run.",
    owner=OWNER,
    tags=DAILY,
)

account_state_source = PushSource(
    name="account_state_push",
    batch_source=FileSource(
        name="account_state_source",
        path=str(DATA / "account_state"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        description="Account-state history: the backfill from the event log, then a part file per batch of `skewless stream`.",
        owner=OWNER,
        tags=TAGS,
    ),
    description="Live account state pushed by `skewless stream` as account events arrive.",
    owner=OWNER,
    tags=TAGS,
)

account_state = FeatureView(
    name="account_state",
    entities=[customer],
    ttl=timedelta(days=3650),  # a state holds until the next event changes it
    schema=[
        Field(name="live_seats", dtype=Int64, description="Seats from the latest plan change or signup event."),
        Field(name="seats_changed_at_us", dtype=Int64, description="When those seats were set (microseconds since the epoch)."),
        Field(name="payment_failure_times_us", dtype=Array(Int64), description="Times of recent payment failures (48 h kept)."),
        Field(name="support_ticket_times_us", dtype=Array(Int64), description="Times of recent support tickets (48 h kept)."),
        Field(name="last_payment_failure_at_us", dtype=Int64, description="Time of the latest payment failure."),
    ],
    source=account_state_source,
    online=True,
    description="What account events say about a customer right now; folded by skewless/account_state.py.",
    owner=OWNER,
    tags={**TAGS, "retention": "48h"},  # event times kept, before the newest: at least the longest live window
)

scoring_request = RequestSource(
    name="scoring_request",
    schema=[Field(name="as_of", dtype=UnixTimestamp, description="Time the score is for.")],
    description="When a score is asked for: the label time in training, the run time in batch, "
    "the request time online. Time-relative features are measured from it.",
    owner=OWNER,
    tags=TAGS,
)


@on_demand_feature_view(
    sources=[customer_profile, customer_activity, scoring_request],
    # No per-field descriptions here: Feast 0.67 compares them with the fields it infers by
    # running the function, which carry none, and refuses the view if they differ.
    schema=[
        Field(name="tenure_days", dtype=Float64),  # days since signup
        Field(name="days_since_last_active", dtype=Float64),  # days since last activity
        Field(name="minutes_per_seat_7d", dtype=Float64),  # active minutes per seat, 7 days
        Field(name="login_trend", dtype=Float64),  # weekly login rate, 7-day over 30-day
        Field(name="fee_per_seat", dtype=Float64),  # monthly fee per seat
    ],
    mode="python",
    description="Ratios and time-relative features, defined once for every path.",
    owner=OWNER,
    tags=TAGS,
)
def customer_derived(inputs: dict) -> dict:
    """Derived features; None wherever an input is missing, never a made-up default."""

    from datetime import datetime, timedelta, timezone

    epoch, naive_epoch, second = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(1970, 1, 1), timedelta(seconds=1)

    def moment(t):  # every skewless path passes a datetime; `feast serve` and the feast CLI pass Unix seconds or ISO text
        if isinstance(t, str):
            t = float(t) if t.replace(".", "", 1).isdigit() else datetime.fromisoformat(t)
            t = t.replace(tzinfo=timezone.utc) if isinstance(t, datetime) and t.tzinfo is None else t
        return datetime.fromtimestamp(t, timezone.utc) if isinstance(t, (int, float)) else t

    # Whole seconds: Feast's online store keeps UnixTimestamp features to the second, so
    # sub-second parts would make online and offline differ. Floor division of timedeltas
    # (exact, nanoseconds included) rather than datetime.replace, ~2x cheaper a value.
    def whole_seconds(t):  # since the epoch; a naive time is UTC, as in moment()
        return (t - (epoch if t.tzinfo else naive_epoch)) // second

    def days(later_s, earlier):
        return None if later_s is None or earlier is None else (later_s - whole_seconds(earlier)) / 86400.0

    def ratio(num, den):
        return None if num is None or den is None or den == 0 else float(num) / float(den)

    as_of_s = [None if a is None else whole_seconds(moment(a)) for a in inputs["as_of"]]
    return {
        "tenure_days": [days(a, s) for a, s in zip(as_of_s, inputs["signup_date"])],
        "days_since_last_active": [days(a, s) for a, s in zip(as_of_s, inputs["last_active_at"])],
        "minutes_per_seat_7d": [ratio(m, s) for m, s in zip(inputs["active_minutes_7d"], inputs["seats"])],
        "login_trend": [
            ratio(l7, None if l30 is None else l30 * 7.0 / 30.0)
            for l7, l30 in zip(inputs["logins_7d"], inputs["logins_30d"])
        ],
        "fee_per_seat": [ratio(f, s) for f, s in zip(inputs["monthly_fee"], inputs["seats"])],
    }


scores_source = FileSource(
    name="churn_scores_source",
    path=str(PREDICTIONS),
    file_format=ParquetFormat(),
    timestamp_field="as_of",
    created_timestamp_column="scored_at",
    description="Churn scores, one Parquet file per batch run (as_of_date=YYYY-MM-DD/), written by `skewless score`.",
    owner=OWNER,
    tags=TAGS,
)

churn_scores = FeatureView(
    name="churn_scores",
    entities=[customer],
    ttl=timedelta(days=3650),  # kept however old: the service reports a score past its budget as stale
    schema=[
        Field(name="churn_probability", dtype=Float64, description="Probability of churn in the next 30 days."),
        Field(name="churn_prediction", dtype=Int32, description="1 when the probability reaches the model's threshold."),
        Field(name="risk_segment", dtype=String, description="Low, Medium or High."),
        Field(name="model_name", dtype=String, description="The model that scored it."),
        Field(name="model_version", dtype=String, description="The bundle version that scored it."),
        Field(name="run_id", dtype=String, description="The batch run that wrote it."),
        Field(name="run_kind", dtype=String, description="full (every active customer), ad-hoc (a list of IDs)."),
    ],
    source=scores_source,
    online=True,
    description="The latest precomputed churn score of each customer, served by ID.",
    owner=OWNER,
    tags={**TAGS, "cadence": "7d", "kind": "scores"},  # scored weekly; `kind`: rows carry their run
)

@on_demand_feature_view(
    sources=[account_state, customer_profile, scoring_request],
    schema=[
        Field(name="payment_failures_24h", dtype=Int64),  # payment failures in the 24 h before as_of
        Field(name="support_tickets_24h", dtype=Int64),  # support tickets in the 24 h before as_of
        Field(name="hours_since_last_payment_failure", dtype=Float64),  # null when there was none
        Field(name="seats_now", dtype=Int64),  # from the latest seats event, else the billing profile
    ],
    mode="python",
    description="Live account features: windows over the account state, relative to the request time.",
    owner=OWNER,
    tags=TAGS,
)
def account_live(inputs: dict) -> dict:
    """Counts in whole seconds (what the online store keeps of as_of); no state means no events: 0."""
    from datetime import datetime, timezone

    window_s = 24 * 3600

    def seconds(t):  # every skewless path passes a datetime; `feast serve` and the feast CLI pass Unix seconds or ISO text
        if isinstance(t, str):
            t = float(t) if t.replace(".", "", 1).isdigit() else datetime.fromisoformat(t)
            t = t.replace(tzinfo=timezone.utc) if isinstance(t, datetime) and t.tzinfo is None else t
        return int(t) if isinstance(t, (int, float)) else int(t.timestamp())

    def in_window(times_us, as_of):
        if as_of is None:
            return None
        now_s = seconds(as_of)
        return sum(1 for t in times_us or () if now_s - window_s < t // 1_000_000 <= now_s)

    def hours_since(as_of, t_us):
        return None if as_of is None or t_us is None else (seconds(as_of) - t_us // 1_000_000) / 3600.0

    as_of = inputs["as_of"]
    return {
        "payment_failures_24h": [in_window(t, a) for t, a in zip(inputs["payment_failure_times_us"], as_of)],
        "support_tickets_24h": [in_window(t, a) for t, a in zip(inputs["support_ticket_times_us"], as_of)],
        "hours_since_last_payment_failure": [hours_since(a, t) for a, t in zip(as_of, inputs["last_payment_failure_at_us"])],
        "seats_now": [live if live is not None else billed for live, billed in zip(inputs["live_seats"], inputs["seats"])],
    }


CHURN_V1 = [
    customer_profile[["plan", "region", "seats", "monthly_fee"]],
    customer_activity[
        [
            "logins_7d",
            "logins_30d",
            "active_minutes_7d",
            "active_minutes_30d",
            "support_tickets_7d",
            "support_tickets_30d",
            "payment_failures_7d",
            "payment_failures_30d",
            "spend_7d",
            "spend_30d",
        ]
    ],
    customer_derived,
]

churn_v1 = FeatureService(
    name="churn_v1",
    features=CHURN_V1,
    description="Feature contract of the churn model, version 1.",
    owner=OWNER,
    tags=TAGS,
)

churn_v2 = FeatureService(
    name="churn_v2",
    features=[*CHURN_V1, account_live],
    description="churn_v1 and the live account features the event stream keeps current.",
    owner=OWNER,
    tags=TAGS,
)
