"""The service's state, built once per worker, and the one prediction pipeline the routes call.

`start(settings)` opens the feature store (TTL-applying reads, bounded Redis waits, registry
read once), loads the bundle through `load_bundle(..., store=store)` (refusing one whose
contract no longer matches the registry), resolves the FeatureService and starts the feature
log. `Service.predict` is lookup -> `skewless.score.score` -> log, with metrics.

Readiness tells the truth about the data, not only the process: Redis must answer, and every
feature view the bundle needs must have a watermark in *this* Redis (feast_plugins/watermark.py)
from this registry, no older than its freshness budget. A new, flushed or foreign Redis, or a
materialization schedule that stopped, is a 503 with the reason, not a service that answers
404 or stale features to every request.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np
import redis

from online.batching import PredictBatcher
from online.breaker import Breaker, StoreUnavailable
from monitoring.feature_log import FeatureLogger, Served
from online.features import FeatureLookup, connect_store
from feast_plugins import watermark
from feast_plugins.redis_layout import view_name
from feast_plugins.redis_server import store_client
from feast_plugins import served_runs
from online.metrics import (
    ERRORS,
    EXPLAIN,
    FEATURE_AGE,
    FEATURE_LOOKUP,
    FEATURE_WATERMARK_AGE,
    MODEL,
    MODEL_INFO,
    MODEL_LOADS,
    ON_DEMAND,
    PREDICTIONS,
    SCORE_ANSWERS,
    SCORE_RUN_AGE,
    tally,
)
from online.schemas import PredictionRow, ServedRunInfo, StoredScore, not_found_row
from online.scores import NoScoresView, ScoreStore
from online.settings import Settings
from skewless.bundle import Bundle, Registered, check_contract, load_bundle
from skewless.explain import explain as explain_rows
from skewless.score import score, warm_up

log = logging.getLogger("skewless.online")
STORE_ERRORS = (redis.RedisError, OSError)
NOT_LOADED_CACHE_S = 1.0  # how long "this Redis holds the views" is taken as read, for not-found answers


class ServiceMetrics:
    """The request path's metrics, labelled children resolved once (a `.labels()` lookup per
    request adds up) and updated through tallies (online/metrics.py:Tally)."""

    def __init__(self, views: list[str]):
        self.lookup_s, self.on_demand_s, self.model_s = tally(FEATURE_LOOKUP), tally(ON_DEMAND), tally(MODEL)
        self.explain_s = tally(EXPLAIN)
        self.ok = tally(PREDICTIONS.labels(outcome="ok"))
        self.not_found = tally(PREDICTIONS.labels(outcome="not_found"))
        self.feature_age = {view: tally(FEATURE_AGE.labels(view=view)) for view in views}
        self.watermark_age = {view: FEATURE_WATERMARK_AGE.labels(view=view) for view in views}
        self.score_answers = {outcome: tally(SCORE_ANSWERS.labels(outcome=outcome)) for outcome in ("current", "stale", "not_found")}


@dataclass
class Watched:
    """The feature views the bundle needs, as the online store's watermarks name them, with budgets."""

    project: str
    registry: str  # the registry's identity (project UUID) the watermarks must carry
    views: list[tuple[str, object, object]]  # (name in Redis, FeatureView, budget timedelta or None)

    @classmethod
    def for_lookup(cls, store, lookup: FeatureLookup, max_lag: str | None) -> "Watched":
        every, per_view = watermark.parse_budgets(max_lag)
        views = [(view_name(v, store.config), v, watermark.budget(v, per_view.get(v.name, every))) for v, _ in lookup.reads]
        return cls(store.project, watermark.registry_id(store.registry, store.project), views)


@dataclass
class Model:
    """Everything that depends on the bundle, swapped as one object at a rollout (online/rollout.py):
    a request reads `service.model` once, so it is scored wholly by one version."""

    bundle: Bundle
    lookup: FeatureLookup
    feature_log: FeatureLogger | None
    metrics: ServiceMetrics
    watched: Watched
    scores: ScoreStore | None  # None when the repo has no scores view
    contract: Registered  # the registry's FeatureService as read at start-up: what `lookup` supplies


@dataclass
class Service:
    settings: Settings
    store: object  # feast.FeatureStore
    model: Model
    breaker: Breaker
    batcher: PredictBatcher  # POST /predict's dynamic batching (online/batching.py)
    rollout_problem: str | None = None  # the last bundle refused at a rollout, while the old one serves
    _not_loaded: dict = field(default_factory=dict)  # route -> (when checked, why): see views_not_loaded

    # the current model's parts, for readers that do not care about a swap in between
    bundle = property(lambda self: self.model.bundle)
    lookup = property(lambda self: self.model.lookup)
    feature_log = property(lambda self: self.model.feature_log)
    metrics = property(lambda self: self.model.metrics)
    watched = property(lambda self: self.model.watched)
    scores = property(lambda self: self.model.scores)

    async def predict_one(self, customer_id: int, include_features: bool = False) -> PredictionRow:
        """One customer's prediction, scored together with the other requests ready now (online/batching.py)."""
        return await self.batcher.predict(self, customer_id, include_features)

    def predict(self, customer_ids: list[int], include_features: bool | Sequence[bool] = False, explain: int = 0) -> list[PredictionRow]:
        """Predictions for `customer_ids` at this instant, in request order (not_found slots included).

        Each is a `PredictionRow`: the Prediction model's fields in its order, None ones left out,
        which online/responses.py serializes exactly as the model would be. Building 100
        Prediction objects and dumping them cost ~0.5 ms of a batch of 100, rows ~0.15
        (measured in process, 2026-12-06). `include_features` is one flag for all, or one per
        ID (a dynamic batch gathers requests that asked differently: online/batching.py).
        `explain` > 0 adds that many reasons to each scored row (skewless/explain.py: exact tree
        SHAP from the same bundle and the same feature values as the score).
        Raises StoreUnavailable (-> 503) when Redis cannot be read.
        """
        m = self.model  # one version for the whole request, whatever a rollout does meanwhile
        now = datetime.now(timezone.utc)
        self.breaker.check()
        try:
            got = m.lookup.lookup(customer_ids, now)
            found = got.found
            n, n_found = len(customer_ids), sum(found)
            missing = self.views_not_loaded() if n_found < n else None  # asked on not-found answers only
        except STORE_ERRORS as exc:
            ERRORS.labels(kind="online_store").inc()
            raise self.breaker.failure(exc) from exc
        self.breaker.success()
        m.metrics.lookup_s.observe(got.read_s)
        m.metrics.on_demand_s.observe(got.transform_s)

        if n_found < n:
            if missing:  # "no features for this customer" would be a lie: this Redis holds none yet
                ERRORS.labels(kind="features_not_loaded").inc()
                raise StoreUnavailable(f"the online store does not hold the features yet: {missing}")
            m.metrics.not_found.inc(n - n_found)
        if n_found == 0:
            return [not_found_row(c) for c in customer_ids]
        m.metrics.ok.inc(n_found)
        # score only the customers with features; the model never sees an all-missing row
        idx = [i for i in range(n) if found[i]]
        feats = got.values if n_found == n else {k: [v[i] for i in idx] for k, v in got.values.items()}
        ids = customer_ids if n_found == n else [customer_ids[i] for i in idx]

        t = time.perf_counter()
        scores = score(m.bundle, feats)
        m.metrics.model_s.observe(time.perf_counter() - t)

        # staleness per request, not per customer: one observation per view, its oldest row used
        now_s = now.timestamp()
        for view, ts in got.view_ts.items():
            oldest = min((x for x in ts if x), default=0.0)
            if oldest:
                m.metrics.feature_age[view].observe(now_s - oldest)

        probability = scores.probability.tolist()
        prediction = scores.prediction.tolist()
        if m.feature_log is not None:
            m.feature_log.log(Served(now, ids, probability, prediction, scores.risk_segment, feats))

        as_of = now.isoformat()
        name, version = m.bundle.name, m.bundle.version
        if isinstance(include_features, bool):
            wanted = [include_features] * n_found
        else:
            wanted = list(include_features) if n_found == n else [include_features[i] for i in idx]
        scored = [
            {"customer_id": cid, "status": "ok", "churn_probability": p, "churn_prediction": y, "risk_segment": s,
             "model_name": name, "model_version": version, "features_as_of": as_of}
            for cid, p, y, s in zip(ids, probability, prediction, scores.risk_segment)
        ]
        for j, row in enumerate(scored):
            if wanted[j]:
                row["features"] = {k: _json_value(v[j]) for k, v in feats.items()}
        if explain:
            t = time.perf_counter()
            for row, why in zip(scored, explain_rows(m.bundle, feats, explain)):
                row["explanation"] = why.to_json()
            m.metrics.explain_s.observe(time.perf_counter() - t)
        if n_found == n:
            return scored
        out = [not_found_row(c) for c in customer_ids]
        for j, i in enumerate(idx):
            out[i] = scored[j]
        return out

    def stored_scores(self, customer_ids: list[int]) -> list[StoredScore]:
        """Stored scores for `customer_ids`, in request order (not_found and stale slots included).

        Raises StoreUnavailable (-> 503) when Redis cannot be read, NoScoresView (-> 404) when the repo has none.
        """
        m = self.model
        if m.scores is None:
            raise NoScoresView("the Feast repo has no scores view (tag kind: scores): there are no stored scores to serve")
        self.breaker.check()
        try:
            out = m.scores.get(customer_ids, datetime.now(timezone.utc))
            missing = self.views_not_loaded("scores") if any(s.status == "not_found" for s in out) else None
        except STORE_ERRORS as exc:
            ERRORS.labels(kind="online_store").inc()
            raise self.breaker.failure(exc) from exc
        self.breaker.success()
        if missing:  # "no stored score for this customer" would be a lie: this Redis holds none yet
            ERRORS.labels(kind="scores_not_loaded").inc()
            raise StoreUnavailable(f"the online store does not hold the scores yet: {missing}")
        for s in out:
            m.metrics.score_answers["current" if s.status == "ok" else s.status].inc()
        return out

    def ready(self, route: str | None = None) -> tuple[str | None, ServedRunInfo | None]:
        """(None when ready, else the reason for /ready's 503; the served batch run, if any).

        `route` "predict" checks only what /predict needs (Redis, the features' watermarks),
        "scores" only what /scores needs (Redis, a full run of the model published and within its
        budget). None checks both, except that a Redis where no run was ever published is not a
        reason: a deployment that serves only /predict is ready (its /scores answers 404). A run
        that was published and has aged past its budget is: the batch job stopped.
        """
        reasons, run = [], None
        try:
            if route in (None, "predict"):
                reasons += self.freshness().problems
            if route in (None, "scores") and self.scores is not None:
                problem, run = self.served_run()
                if problem and (run is not None or route == "scores"):
                    reasons.append(problem)
        except STORE_ERRORS as exc:
            ERRORS.labels(kind="online_store").inc()
            return f"{self.breaker.what} not answering: {type(exc).__name__}: {exc}", None
        self.breaker.success()  # Redis answers: let requests through at once
        return "; ".join(reasons) or None, run

    def served_run(self) -> tuple[str | None, ServedRunInfo | None]:
        """The newest full run of the served model in this Redis, and a problem when there is none or it is stale."""
        name = self.bundle.name
        now = datetime.now(timezone.utc)
        run = served_runs.read_runs(store_client(self.store), self.store.project).get(name)
        gauge = SCORE_RUN_AGE.labels(model=name)
        if run is None:
            gauge.set(-1)
            return (f"scores: no full batch run of {name} is published to this Redis: run `skewless score --as-of now` "
                    "with the Redis named (REDIS_URL), or `skewless materialize`"), None
        age = run.age(now)
        gauge.set(age.total_seconds())
        info = ServedRunInfo(model=f"{run.model_name}/{run.model_version}", run_id=run.run_id, as_of=run.as_of.isoformat(),
                             age_seconds=round(age.total_seconds(), 1), rows=run.rows)
        limit = self.scores.budget(name)
        if limit is not None and age > limit:
            return (f"scores: the newest full run of {name} ({run.run_id}, as-of {run.as_of:%Y-%m-%d %H:%M} UTC) is "
                    f"{watermark.format_age(age)} old, over its freshness budget of {watermark.format_age(limit)}: "
                    "the batch schedule is behind"), info
        return None, info

    def views_not_loaded(self, route: str = "predict") -> str | None:
        """Which views a route reads (`predict`: the model's features; `scores`: the scores view)
        this Redis holds no watermark for (a new, flushed or replaced Redis), or None. Asked only
        when a customer has no features or no score, so that a 404 says what it means (this
        customer, not this Redis); remembered for NOT_LOADED_CACHE_S, which bounds the cost to one
        read of the watermarks a second whatever the rate of unknown IDs.
        """
        checked_at, missing = self._not_loaded.get(route, (float("-inf"), None))
        now = time.monotonic()
        if now - checked_at < NOT_LOADED_CACHE_S:
            return missing
        if route == "scores":
            view = self.scores.view
            marks = watermark.read_all(store_client(self.store), self.watched.project)
            ages = watermark.check(marks, [(view_name(view, self.store.config), view, None)], self.watched.registry,
                                   datetime.now(timezone.utc)).ages
            fix = "run `skewless score --as-of now` with this Redis named (REDIS_URL), or `skewless materialize`"
        else:
            ages = self.freshness().ages
            fix = "run `skewless materialize`"
        gone = [name for name, age in ages.items() if age is None]  # no watermark that counts
        missing = f"{', '.join(gone)} not materialized into this Redis: {fix}" if gone else None
        self._not_loaded[route] = (now, missing)
        return missing

    def freshness(self) -> watermark.Freshness:
        """The watermarks of the views the bundle needs, read from Redis now; sets the age gauges."""
        client = store_client(self.store)
        marks = watermark.read_all(client, self.watched.project)
        result = watermark.check(marks, self.watched.views, self.watched.registry, datetime.now(timezone.utc))
        for view, age in result.ages.items():
            self.metrics.watermark_age[view].set(-1 if age is None else age)
        return result

    def swap(self, new: Model) -> Model:
        """Put a loaded and verified model in; the old one is returned (its log still to close)."""
        old, self.model = self.model, new
        self.rollout_problem = None
        return old

    def close(self) -> None:
        if self.model.feature_log is not None:
            self.model.feature_log.close()
        gc.unfreeze()  # let the interpreter free the start-up objects at exit (nanobind warns otherwise)


def _json_value(v):
    """A feature value as it goes out in JSON: NaN (missing to the model) as null."""
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_model(settings: Settings, store, version: str, current: Model | None = None) -> Model:
    """Load and verify a bundle (sha256, contract against the registry) and build what serves it.

    At a rollout, a bundle on the same FeatureService as the `current` model reuses its feature
    lookup, budgets and metrics, and is checked against the contract read at start-up, which is
    what that lookup supplies (the registry is read once: online/features.py:connect_store).
    Resolving them again takes ~50 ms of Python, held against the requests the worker is
    answering meanwhile. Raises BundleError (one line) for a bundle that fails verification;
    nothing is started then.
    """
    bundle = load_bundle(version, settings.model_dir)  # sha256, manifest against the model file
    same_service = current is not None and current.bundle.feature_service == bundle.feature_service
    contract = check_contract(bundle, store, registry=current.contract if same_service else None)
    if same_service:
        lookup, watched, metrics = current.lookup, current.watched, current.metrics
        scores = None if current.scores is None else replace(current.scores, serving=(bundle.name, bundle.version))
    else:
        lookup = FeatureLookup(store, bundle.feature_service)
        watched = Watched.for_lookup(store, lookup, settings.feature_max_lag)
        scores = ScoreStore.open(store, (bundle.name, bundle.version), settings.score_max_age)
        metrics = ServiceMetrics(list(lookup.view_features))
    warm_up(bundle)
    feature_log = None
    if settings.feature_log:
        feature_log = FeatureLogger(
            settings.feature_log_dir, bundle, settings.feature_log_max_rows, settings.feature_log_flush_s,
            settings.feature_log_rotate_rows, settings.feature_log_rotate_s,
        )
    MODEL_LOADS.inc()
    MODEL_INFO.labels(model_name=bundle.name, model_version=bundle.version, feature_service=bundle.feature_service).set(1)
    return Model(bundle, lookup, feature_log, metrics, watched, scores, contract)


def start(settings: Settings) -> Service:
    """Open the store, load and verify the bundle, resolve the features, start the log."""
    store, warning = connect_store(settings.repo_path, settings.redis, settings.redis_timeout_s, settings.redis_retries)
    if warning:
        log.warning(warning)
    model = load_model(settings, store, settings.model_version)
    config = store.config.online_store
    where = config.connection_string.split(",")[0]
    breaker = Breaker(settings.redis_cooldown_s, f"online store (Redis {where})")
    service = Service(settings, store, model, breaker, PredictBatcher(settings.batch_max_ids, settings.batch_wait_ms / 1000))
    _warm_up(service)
    # Everything loaded so far (Feast, the registry, pandas, the model: ~270k objects) lives as
    # long as the worker. Moved out of the collector's reach, a full collection under load takes
    # ~1.5 ms instead of ~200 ms (measured here), which would otherwise land on some request's p99.
    gc.collect()
    gc.freeze()
    return service


def _warm_up(service: Service) -> None:
    """One lookup before the first request: connections, caches (load_model already scored once).

    Redis may be down at start: the service starts anyway (/ready says why) and recovers later.
    """
    try:
        service.lookup.lookup([0], datetime.now(timezone.utc))
    except STORE_ERRORS as exc:
        log.warning("online store not answering at start-up (%s); /ready is 503 until it does", exc)
