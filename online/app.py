"""The online churn service: POST /predict with a customer ID, features from Redis through Feast.

The lifespan opens the feature store and loads the bundle once (refusing one whose contract no
longer matches the registry); routes are thin: look up features (online/features.py), score
with the shared function (training/score.py), log what was served (online/feature_log.py).
Run it with `skewless serve`.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, StrictInt
from starlette.responses import Response

from online.feature_log import FeatureLogger
from online.features import OnlineFeatures
from online.metrics import ERRORS, FEATURE_AGE, FEATURE_LOOKUP, MODEL, REQUESTS
from online.settings import Settings
from training.bundle import Bundle, load_bundle
from training.score import score
from training.store import REDIS_ENV, open_store

INT64_MAX = 2**63 - 1
CustomerId = Annotated[StrictInt, Field(ge=0, le=INT64_MAX, description="The customer's ID (customer_id join key).")]


class PredictRequest(BaseModel):
    customer_id: CustomerId


class BatchRequest(BaseModel):
    customer_ids: list[CustomerId] = Field(min_length=1, max_length=1_000)


class Prediction(BaseModel):
    customer_id: int
    status: str = "ok"
    churn_probability: float | None = None
    churn_prediction: int | None = None
    risk_segment: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    features_as_of: str | None = None
    features: dict[str, Any] | None = None


class BatchResponse(BaseModel):
    predictions: list[Prediction]


class Unavailable(Exception):
    """The online store did not answer in time."""


def _with_timeouts(conn: str, timeout: float) -> str:
    extra = [p for p in (f"socket_timeout={timeout}", f"socket_connect_timeout={timeout}") if p.split("=")[0] not in conn]
    return ",".join([conn, *extra])


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    os.environ[REDIS_ENV] = _with_timeouts(os.environ.get(REDIS_ENV, "127.0.0.1:6379"), settings.redis_timeout_s)
    store = open_store(settings.repo_path)
    # redis-py retries a failed command with backoff for seconds by default; one immediate
    # retry (a dropped idle connection) is all a live request can afford.
    online_redis(store).set_retry(Retry(NoBackoff(), 1))
    bundle = load_bundle(settings.model_version, settings.model_dir, store=store)
    bundle.booster.set_param({"nthread": 1})
    app.state.store = store
    app.state.bundle = bundle
    app.state.features = OnlineFeatures(store, bundle.feature_service)
    app.state.feature_log = FeatureLogger(
        settings.feature_log_dir, bundle, settings.feature_log_queue, settings.feature_log_flush_rows, settings.feature_log_flush_s
    )
    app.state.loads = getattr(app.state, "loads", 0) + 1
    try:
        yield
    finally:
        app.state.feature_log.close()


def online_redis(store) -> redis.Redis:
    """The redis-py client inside Feast's Redis online store (created on first use)."""
    return store._get_provider().online_store._get_client(store.config.online_store)


def get_bundle(request: Request) -> Bundle:
    return request.app.state.bundle


def get_features(request: Request) -> OnlineFeatures:
    return request.app.state.features


def get_feature_log(request: Request) -> FeatureLogger:
    return request.app.state.feature_log


def predict_many(ids: list[int], bundle: Bundle, lookup: OnlineFeatures, log: FeatureLogger, include_features: bool) -> list[Prediction]:
    """Features for `ids` at the request time, scored with the shared function, in request order."""
    t = time.perf_counter()
    try:
        result, now = lookup.lookup(ids)
    except (redis.RedisError, OSError) as exc:
        ERRORS.labels(kind="online_store").inc()
        raise Unavailable(f"online store (Redis) unavailable: {type(exc).__name__}: {exc}") from exc
    FEATURE_LOOKUP.observe(time.perf_counter() - t)
    t = time.perf_counter()
    scores = score(bundle, result.features)
    MODEL.observe(time.perf_counter() - t)
    as_of = now.isoformat()
    out = []
    for i, cid in enumerate(ids):
        if not result.found[i]:
            out.append(Prediction(customer_id=cid, status="not_found"))
            continue
        feats = {name: values[i] for name, values in result.features.items()}
        p = float(scores.probability[i])
        pred = Prediction(
            customer_id=cid, churn_probability=p, churn_prediction=int(scores.prediction[i]), risk_segment=scores.risk_segment[i],
            model_name=bundle.name, model_version=bundle.version, features_as_of=as_of,
            features=_jsonable(feats) if include_features else None,
        )
        out.append(pred)
        if result.oldest_age_s[i] is not None:
            FEATURE_AGE.observe(result.oldest_age_s[i])
        log.log({"customer_id": cid, "request_time": now, "model_name": bundle.name, "model_version": bundle.version,
                 "churn_probability": p, "churn_prediction": pred.churn_prediction, "risk_segment": pred.risk_segment,
                 **{f.name: _loggable(feats[f.name], f.is_categorical) for f in bundle.features}})
    return out


def _jsonable(feats: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in feats.items()}


def _loggable(v: Any, categorical: bool) -> Any:
    if v is None:
        return None
    return str(v) if categorical else float(v)


class RequestMetrics:
    """Pure ASGI middleware: request latency by route and status (no per-request task or copy)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            REQUESTS.labels(route=getattr(route, "path", "unmatched"), method=scope["method"], status=str(status["code"])).observe(time.perf_counter() - t)


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="skewless churn service",
        description="Churn predictions by customer ID, with features from the Feast online store.",
        version="1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings()

    app.add_middleware(RequestMetrics)

    # Routes are `async def` that call the (blocking) lookup directly, on purpose: it is ~1 ms
    # of mostly CPU work with Redis waits bounded by redis_timeout_s, and a threadpool hop per
    # request costs more than it saves. Concurrency comes from `skewless serve --workers`.

    @app.exception_handler(Unavailable)
    async def unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.post("/predict", response_model=Prediction, response_model_exclude_none=True,
              responses={404: {"description": "No features for this customer in the online store."}, 503: {"description": "Online store unavailable."}})
    async def predict(
        body: PredictRequest,
        include_features: bool = Query(False, description="Also return the feature values used."),
        bundle: Bundle = Depends(get_bundle),
        lookup: OnlineFeatures = Depends(get_features),
        log: FeatureLogger = Depends(get_feature_log),
    ):
        pred = predict_many([body.customer_id], bundle, lookup, log, include_features)[0]
        if pred.status == "not_found":
            ERRORS.labels(kind="not_found").inc()
            return JSONResponse(status_code=404, content={"detail": f"customer {body.customer_id} has no features in the online store"})
        return pred

    @app.post("/predict/batch", response_model=BatchResponse, response_model_exclude_none=True)
    async def predict_batch(
        body: BatchRequest,
        include_features: bool = Query(False, description="Also return the feature values used."),
        bundle: Bundle = Depends(get_bundle),
        lookup: OnlineFeatures = Depends(get_features),
        log: FeatureLogger = Depends(get_feature_log),
    ):
        return BatchResponse(predictions=predict_many(body.customer_ids, bundle, lookup, log, include_features))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/ready", responses={503: {"description": "Not ready, with the reason."}})
    def ready(request: Request):
        state = request.app.state
        if getattr(state, "bundle", None) is None:
            return JSONResponse(status_code=503, content={"ready": False, "reason": "model not loaded"})
        try:
            online_redis(state.store).ping()
        except (redis.RedisError, OSError) as exc:
            ERRORS.labels(kind="online_store").inc()
            return JSONResponse(status_code=503, content={"ready": False, "reason": f"online store (Redis) not answering: {exc}"})
        return {"ready": True, "model": f"{state.bundle.name}/{state.bundle.version}"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
