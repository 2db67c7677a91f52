"""The online churn service: POST /predict with a customer ID, features from Redis through Feast.

    uvicorn online.app:create_app --factory      (or `skewless serve`)

The lifespan builds the service once per worker (online/service.py: store, verified bundle,
resolved features, feature log) and closes it on shutdown, which flushes the feature log.
Routes are thin: validate (online/schemas.py), call `Service.predict`, shape the answer.
Two ASGI layers sit in front (online/middleware.py): request metrics with the body-size limit,
and the fast path of POST /predict and /predict/batch, which answers plain requests with the
routes' own answers.

Routes are `async def` and call the blocking feature read directly, on purpose. A request is
~1 ms of CPU-bound Python with one Redis round trip of ~0.1 ms; handing it to the threadpool
(what a plain `def` route does) costs more than that round trip and adds GIL hand-offs, and
concurrency on a multi-core machine comes from `--workers` anyway. What this gives up, an event
loop free while Redis is slow, is covered by the bounded socket timeout and the breaker
(online/breaker.py): a hung Redis costs one timeout per cooldown, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as FastAPIPath
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.responses import Response

from online.auth import ApiKeys
from online.breaker import StoreUnavailable
from online.metrics import ERRORS, render
from online.middleware import PredictFastPath, RequestMetrics
from online.responses import PydanticJSON, batch_answer, prediction_answer, store_unavailable
from online.rollout import Rollout
from online.schemas import (
    DEFAULT_REASONS,
    INT64_MAX,
    MAX_REASONS,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    Health,
    InvalidRequest,
    Prediction,
    PredictRequest,
    Readiness,
    ScoreNotCurrent,
    ScoresRequest,
    ScoresResponse,
    StoredScore,
)
from online.scores import NoScoresView
from online.service import STORE_ERRORS, Service, start
from online.settings import Settings

log = logging.getLogger("skewless.online")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    service = start(app.state.settings)
    app.state.service = service
    rollout = Rollout(service, app.state.settings.model_poll_s).start()
    app.state.rollout = rollout
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, rollout.poke)  # `kill -HUP <worker>`: load the bundle again now
    except (NotImplementedError, RuntimeError, ValueError):
        pass  # not the main thread (a test client) or no SIGHUP on this platform: the watch still runs
    try:
        yield
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        rollout.stop()
        service.close()


class AuthorizedService(HTTPBearer):
    """The one dependency of the protected routes: the API-key check, then the worker's Service.

    One dependency rather than a key check, a bearer parser and a service getter: each FastAPI
    dependency costs ~40 us a request on this machine, more than the Redis round trip. Being
    FastAPI's HTTPBearer, it still puts the bearer scheme in the OpenAPI schema. No keys
    configured: open (online/auth.py; a non-loopback bind then needs --allow-open).
    """

    async def __call__(self, request: Request) -> Service:  # type: ignore[override]
        keys: ApiKeys = request.app.state.api_keys
        if keys.configured:
            credentials = await super().__call__(request)
            if not keys.allows(None if credentials is None else credentials.credentials):
                ERRORS.labels(kind="unauthorized").inc()
                raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                    headers={"WWW-Authenticate": UNAUTHORIZED})
        return request.app.state.service


UNAUTHORIZED = 'Bearer realm="skewless"'
authorized_service = AuthorizedService(
    auto_error=False, scheme_name="ApiKey",
    description="An API key as a bearer token (SKEWLESS_API_KEYS or SKEWLESS_API_KEYS_FILE); not needed when none is configured.")
ServiceDep = Annotated[Service, Depends(authorized_service)]
IncludeFeatures = Annotated[bool, Query(description="Also return the feature values passed to the model.")]
Explain = Annotated[bool, Query(description="Also return the top reasons: exact tree SHAP contributions and the base value.")]
ExplainTop = Annotated[int, Query(ge=1, le=MAX_REASONS, description="How many reasons with ?explain=true.")]

ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "description": "The body could not be read (not UTF-8, or a broken transfer)."},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key (`WWW-Authenticate: Bearer`)."},
    413: {"model": ErrorResponse, "description": "Body larger than the limit (SKEWLESS_MAX_BODY_BYTES), however it is framed."},
    422: {"model": InvalidRequest, "description": "Invalid body: wrong types, missing or unknown fields, IDs outside 0..2^63-1, "
                                                   "too many IDs, malformed JSON. Echoed inputs are capped."},
    503: {"model": ErrorResponse, "description": "The online store (Redis) is not answering, or holds none of the "
                                                   "features (/predict) or scores (/scores) yet: a new or flushed Redis, not "
                                                   "materialized; retry later."},
}
MAX_ECHO_ITEMS = 10  # list items or dict keys a 422 repeats of the input
MAX_ECHO_CHARS = 200
MAX_ERRORS = 20


def _capped(value):
    """What a 422 repeats of the input: at most MAX_ECHO_ITEMS items a list or dict and
    MAX_ECHO_CHARS a string, so 1,001 IDs in is not 1,001 IDs out."""
    if isinstance(value, str):
        return value if len(value) <= MAX_ECHO_CHARS else value[:MAX_ECHO_CHARS] + f"... ({len(value):,} characters)"
    if isinstance(value, list | tuple):
        head = [_capped(v) for v in value[:MAX_ECHO_ITEMS]]
        return head + ([f"... ({len(value):,} items)"] if len(value) > MAX_ECHO_ITEMS else [])
    if isinstance(value, dict):
        items = list(value.items())
        head = {str(k)[:MAX_ECHO_CHARS]: _capped(v) for k, v in items[:MAX_ECHO_ITEMS]}
        return head | ({"...": f"{len(items):,} keys"} if len(items) > MAX_ECHO_ITEMS else {})
    return value


def _json_safe(value):
    """The value with non-finite floats as strings: Python's JSON parser accepts `NaN` and
    `Infinity` in a body, and an error echoing them back must still be valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="skewless churn service",
        description="Churn predictions by customer ID. Features come from the Feast online store at the request "
        "time, with the same TTLs and on-demand transform as training; scoring uses the model bundle's own function.",
        version="1.0",
        lifespan=lifespan,
        # metrics are Prometheus (/metrics); FastAPI's OpenTelemetry hooks would otherwise look
        # for a configured provider in every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.api_keys = ApiKeys(settings.api_keys, settings.api_keys_file)
    if settings.predict_fast_path:
        app.add_middleware(PredictFastPath)
    app.add_middleware(RequestMetrics, max_body_bytes=settings.max_body_bytes)  # added last: the outer one

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return store_unavailable(exc)

    @app.exception_handler(NoScoresView)
    async def no_scores_view(_: Request, exc: NoScoresView) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "stale": False}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 (`detail`: the list of errors) plus `message`: one line a person can act on."""
        ERRORS.labels(kind="invalid_request").inc()
        all_errors = exc.errors()
        errors = [_capped(e) for e in _json_safe(jsonable_encoder(all_errors[:MAX_ERRORS]))]
        if len(all_errors) > MAX_ERRORS:
            errors.append({"type": "too_many_errors", "loc": [], "msg": f"{len(all_errors) - MAX_ERRORS:,} more errors not shown"})
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type:
            message = f"send the body as JSON with 'Content-Type: application/json' (got {content_type or 'no content type'!r})"
        else:
            message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors[:5])
        return JSONResponse({"detail": errors, "message": message}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        ERRORS.labels(kind="internal").inc()
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the service log"}, status_code=500)

    @app.post(
        "/predict", response_model=Prediction, response_model_exclude_none=True, tags=["predict"],
        responses={404: {"model": ErrorResponse, "description": "No features for this customer in the online store."}, **ERROR_RESPONSES},
    )
    async def predict(body: PredictRequest, service: ServiceDep, include_features: IncludeFeatures = False,
                      explain: Explain = False, explain_top: ExplainTop = DEFAULT_REASONS) -> Response:
        """Churn prediction for one customer, with features as of now."""
        if explain:  # scored on its own: explanations are not part of the dynamic batch
            return prediction_answer(service.predict([body.customer_id], include_features, explain_top)[0])
        return prediction_answer(await service.predict_one(body.customer_id, include_features))

    @app.post("/predict/batch", response_model=BatchResponse, response_model_exclude_none=True, tags=["predict"],
              responses=ERROR_RESPONSES)
    async def predict_batch(body: BatchRequest, service: ServiceDep, include_features: IncludeFeatures = False,
                            explain: Explain = False, explain_top: ExplainTop = DEFAULT_REASONS) -> Response:
        """Predictions for up to 1,000 customers in request order; an ID without features gets status not_found."""
        return batch_answer(service.predict(body.customer_ids, include_features, explain_top if explain else 0))

    # before /scores/{customer_id}: a wrong method on /scores/batch then answers 405 with `Allow: POST`, not GET
    @app.post("/scores/batch", response_model=ScoresResponse, response_model_exclude_none=True, tags=["scores"],
              responses=ERROR_RESPONSES)
    async def stored_scores(body: ScoresRequest, service: ServiceDep) -> Response:
        """Stored scores of up to 1,000 customers in request order; `not_found` and `stale` slots carry no values."""
        return PydanticJSON(ScoresResponse.model_construct(scores=service.stored_scores(body.customer_ids)))

    @app.get(
        "/scores/{customer_id}", response_model=StoredScore, response_model_exclude_none=True, tags=["scores"],
        responses={404: {"model": ScoreNotCurrent, "description": "No stored score, or one past its freshness budget (`stale`)."}, **ERROR_RESPONSES},
    )
    async def stored_score(customer_id: Annotated[int, FastAPIPath(ge=0, le=INT64_MAX, description="The customer's ID (int64).")],
                           service: ServiceDep) -> Response:
        """The stored (precomputed) score of one customer, with its model version, as-of, source and age; no model call."""
        s = service.stored_scores([customer_id])[0]
        if s.status == "not_found":
            return JSONResponse({"detail": f"customer {customer_id} has no stored score", "stale": False}, status_code=404)
        if s.status == "stale":
            return JSONResponse({"detail": f"the stored score of customer {customer_id} is stale: as of {s.as_of}, older than "
                                           f"the freshness budget of {s.model_name}", "stale": True, "age_seconds": s.age_seconds,
                                 "as_of": s.as_of, "max_age_seconds": s.max_age_seconds}, status_code=404)
        return PydanticJSON(s)

    @app.get("/health", response_model=Health, tags=["operations"])
    async def health() -> Health:
        """The process is alive (liveness); says nothing about Redis or the model."""
        return Health()

    @app.get("/ready", response_model=Readiness, response_model_exclude_none=True, tags=["operations"],
             responses={503: {"model": Readiness, "description": "Not ready, with the reason."}})
    async def ready(request: Request, route: Annotated[Literal["predict", "scores"] | None, Query(
            description="Check only what one route family needs: `predict` (features) or `scores` (a fresh batch run).")] = None):
        """Readiness: the model loaded, Redis answering, every feature view the model needs loaded in this Redis and
        fresh (for /predict), and the newest full batch run published for /scores within its budget (with its age).
        `?route=scores` also requires that a run was published at all."""
        service: Service | None = getattr(request.app.state, "service", None)
        if service is None:
            return JSONResponse({"ready": False, "reason": "model not loaded"}, status_code=503)
        reason, run = service.ready(route)
        scores = None if run is None else run.model_dump()
        model = f"{service.bundle.name}/{service.bundle.version}"
        rollout = service.rollout_problem
        if reason:
            return JSONResponse({"ready": False, "model": model, "reason": reason, **({"scores": scores} if scores else {}),
                                 **({"rollout": rollout} if rollout else {})}, status_code=503)
        return Readiness(ready=True, model=model, scores=run, rollout=rollout)

    # HEAD too, for the load balancers and uptime checks that probe with it (same status, no body)
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/ready", ready, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", tags=["operations"], response_class=Response, dependencies=[Depends(authorized_service)] if settings.metrics_need_key else [],
             responses={401: ERROR_RESPONSES[401]} if settings.metrics_need_key else {})
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (all workers' when served with --workers > 1)."""
        service: Service | None = getattr(request.app.state, "service", None)
        if service is not None:
            try:
                service.freshness()  # the watermark ages and the served run's age, read from Redis at the scrape
                if service.scores is not None:
                    service.served_run()
            except STORE_ERRORS:
                pass  # Redis down: /ready says so; the gauges keep their last values
        body, content_type = render()
        return Response(body, media_type=content_type)

    return app
