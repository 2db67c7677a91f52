"""Precomputed scores by customer ID: the `churn_scores` view read straight from Redis, no model call.

The batch run's output is a Feast feature view (feature_repo/: `churn_scores` over the
predictions Parquet), loaded into Redis by the project's materialization engine, so this reads
Feast's own layout with the same reader as /predict's features (online/features.py:RedisReader):
one HMGET per customer. The stored row's event time is the score's as-of time.

Freshness cannot lie: a score older than its model's budget (the view's `cadence` tag plus a
day, 8 days for the weekly run, or SKEWLESS_SCORE_MAX_AGE) is answered as stale, never as
current, and counted; a score from another model version than the one this service serves
says so (`current_model: false`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from feast_plugins import served_runs, watermark
from online.features import RedisReader
from online.schemas import StoredScore

COLUMNS = ["churn_probability", "churn_prediction", "risk_segment", "model_name", "model_version", "run_id", "run_kind"]
EVENT_KIND = "event"  # run_kind of a score written by the event path


class NoScoresView(Exception):
    """The Feast repo has no scores view, so there are no stored scores (-> 404)."""


@dataclass
class ScoreStore:
    """The scores view, resolved once at start-up; `get` runs per request."""

    view: object  # the feast FeatureView
    reader: RedisReader
    default_budget: timedelta | None
    budgets: dict[str, timedelta]  # per model name
    serving: tuple[str, str]  # (model name, version) of the bundle this service serves

    @classmethod
    def open(cls, store, serving: tuple[str, str], max_age: str | None) -> "ScoreStore | None":
        view = served_runs.scores_view(store)
        if view is None:
            return None
        reader = RedisReader.for_store(store, [(view, COLUMNS)], "customer_id")
        if reader is None:
            raise ValueError(f"the scores view {view.name!r} is not readable by key here (another key layout or a Redis cluster)")
        every, per_model = watermark.parse_budgets(max_age)
        return cls(view, reader, watermark.budget(view, every), per_model, serving)

    def budget(self, model_name: str | None) -> timedelta | None:
        return self.budgets.get(model_name or "", self.default_budget)

    def get(self, customer_ids: list[int], now: datetime) -> list[StoredScore]:
        """The stored scores of `customer_ids` at `now`, in request order; stale ones without their values."""
        values: dict[str, list] = {}
        as_of = self.reader.read(customer_ids, now.timestamp(), values)[self.view.name]
        out = []
        name, version = self.serving
        for i, cid in enumerate(customer_ids):
            if not as_of[i]:
                out.append(StoredScore.model_construct(customer_id=cid, status="not_found"))
                continue
            model = values["model_name"][i]
            age = now.timestamp() - as_of[i]
            limit = self.budget(model)
            common = dict(
                customer_id=cid, model_name=model, model_version=values["model_version"][i],
                current_model=(model, values["model_version"][i]) == (name, version),
                as_of=datetime.fromtimestamp(as_of[i], timezone.utc).isoformat(), age_seconds=round(age, 3),
                max_age_seconds=None if limit is None else limit.total_seconds(),
                source="event" if values["run_kind"][i] == EVENT_KIND else "batch", run_id=values["run_id"][i], run_kind=values["run_kind"][i],
            )
            if limit is not None and age > limit.total_seconds():
                out.append(StoredScore.model_construct(status="stale", stale=True, **common))
            else:
                out.append(StoredScore.model_construct(
                    status="ok", stale=False, churn_probability=values["churn_probability"][i],
                    churn_prediction=values["churn_prediction"][i], risk_segment=values["risk_segment"][i], **common))
        return out
