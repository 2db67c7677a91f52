"""The answers the routes and the /predict fast path (online/middleware.py) both send.

One place for each, so a request answered before FastAPI's routing gets byte for byte what the
route would have sent.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic_core import to_json
from starlette.responses import Response

from online.breaker import StoreUnavailable
from online.metrics import ERRORS
from online.schemas import PredictionRow


class PydanticJSON(Response):
    """A response model serialized by Pydantic itself (nulls left out).

    The routes declare `response_model` for the OpenAPI schema, but return this: FastAPI would
    otherwise validate every outgoing object again (the service builds them from values it
    already checked), which costs more than the rest of the route for a batch of 100.
    """

    media_type = "application/json"

    def __init__(self, model: BaseModel, status_code: int = 200):
        super().__init__(model.model_dump_json(exclude_none=True), status_code=status_code)


class RowsJSON(Response):
    """Prediction rows (online/schemas.py:PredictionRow) written by pydantic-core's own JSON
    serializer: the bytes `model_dump_json(exclude_none=True)` gives for the Prediction models
    (the routes' response_model, kept for the OpenAPI schema), without building the models.

    The rows hold only values the service made (ints, floats from numpy's tolist, strings, the
    features' JSON values), so validating them again on the way out checks nothing; an
    unexpected type is an error here (no fallback), never a silently different answer.
    """

    media_type = "application/json"

    def __init__(self, content: PredictionRow | dict[str, list[PredictionRow]], status_code: int = 200):
        super().__init__(to_json(content, inf_nan_mode="null"), status_code=status_code)


def prediction_answer(prediction: PredictionRow) -> Response:
    """POST /predict's answer: the prediction, or the 404 when the customer has no features (counted)."""
    if prediction["status"] == "not_found":
        ERRORS.labels(kind="not_found").inc()
        return no_features(prediction["customer_id"])
    return RowsJSON(prediction)


def batch_answer(predictions: list[PredictionRow]) -> RowsJSON:
    """200 of POST /predict/batch: the predictions in request order."""
    return RowsJSON({"predictions": predictions})


def store_unavailable(exc: StoreUnavailable) -> JSONResponse:
    """503: Redis not answering or not loaded yet; the client may retry in a second."""
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


def no_features(customer_id: int) -> JSONResponse:
    """404 of POST /predict: what FastAPI's HTTPException(404, ...) handler sends."""
    return JSONResponse({"detail": f"customer {customer_id} has no features in the online store "
                                   "(never materialized, or every row is past its view's TTL)"}, status_code=404)
