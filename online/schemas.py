"""Request and response bodies of the churn service (they are also its OpenAPI schema).

Requests are strict: an ID is a JSON integer from 0 to 2^63-1 (the int64 join key), never a
string, float or bool, and unknown fields are refused, so a typo such as `customer_ids` sent to
/predict is a 422 naming the field rather than a silently different request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

INT64_MAX = 2**63 - 1
MAX_BATCH = 1_000

CustomerId = Annotated[StrictInt, Field(ge=0, le=INT64_MAX, description="The customer's ID (Feast join key `customer_id`, int64).")]
FeatureValue = float | int | str | bool | None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"customer_id": 42}]})

    customer_id: CustomerId


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"customer_ids": [42, 7, 1234]}]})

    customer_ids: list[CustomerId] = Field(min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH:,} IDs; answered in this order.")


DEFAULT_REASONS = 3  # reasons in an explanation unless ?explain_top= says otherwise
MAX_REASONS = 20


class Reason(BaseModel):
    feature: str
    value: FeatureValue = Field(None, description="The value the model saw; absent = missing.")
    contribution: float = Field(description="Its exact tree SHAP value: its share of the margin, in log-odds.")
    direction: Literal["raises", "lowers"] = Field(description="What it does to the churn risk.")


class Explanation(BaseModel):
    base_value: float = Field(description="The model's margin before any feature (log-odds).")
    margin: float = Field(description="base_value + every feature's contribution: the score's log-odds.")
    reasons: list[Reason] = Field(description="The largest contributions, by size.")


class Prediction(BaseModel):
    customer_id: int
    status: Literal["ok", "not_found"] = Field("ok", description="`not_found`: no features for this ID in the online store.")
    churn_probability: float | None = Field(None, description="Probability of churn in the label horizon (30 days).")
    churn_prediction: int | None = Field(None, description="1 when churn_probability reaches the model's decision threshold.")
    risk_segment: str | None = Field(None, description="Low, Medium or High, from the model's segment bounds.")
    model_name: str | None = None
    model_version: str | None = None
    features_as_of: str | None = Field(None, description="Request time the features were computed for (ISO 8601, UTC).")
    features: dict[str, FeatureValue] | None = Field(
        None, description="With ?include_features=true: the values passed to the model, by feature name; null = missing."
    )
    explanation: Explanation | None = Field(None, description="With ?explain=true: why, as the top `explain_top` reasons.")


class BatchResponse(BaseModel):
    predictions: list[Prediction]


PredictionRow = dict[str, Any]
"""A Prediction as the service builds it: the model's fields by name, in its order, the None
ones left out; online/responses.py writes it as the model's own JSON (model_dump_json with
exclude_none), which tests/test_fast_path.py checks on every kind of answer."""


def not_found_row(customer_id: int) -> PredictionRow:
    return {"customer_id": customer_id, "status": "not_found"}


class ScoresRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"customer_ids": [42, 7, 1234]}]})

    customer_ids: list[CustomerId] = Field(min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH:,} IDs; answered in this order.")


class StoredScore(BaseModel):
    """A precomputed score as stored, with how old it is. No model runs to answer it."""

    customer_id: int
    status: Literal["ok", "not_found", "stale"] = Field(
        "ok", description="`not_found`: no stored score; `stale`: older than the model's freshness budget (its values are not given).")
    churn_probability: float | None = None
    churn_prediction: int | None = None
    risk_segment: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    current_model: bool | None = Field(None, description="False when a model version other than the one this service serves wrote it.")
    as_of: str | None = Field(None, description="The time the score is for (ISO 8601, UTC).")
    age_seconds: float | None = Field(None, description="Now minus as_of.")
    max_age_seconds: float | None = Field(None, description="The model's freshness budget.")
    stale: bool | None = None
    source: Literal["batch", "event"] | None = Field(None, description="A batch run (full or ad-hoc) or an event.")
    run_id: str | None = None
    run_kind: str | None = None


class ScoresResponse(BaseModel):
    scores: list[StoredScore]


class ScoreNotCurrent(BaseModel):
    """404 of GET /scores/{id}: no score, or one past its freshness budget (`stale`, with its age)."""

    detail: str
    stale: bool
    age_seconds: float | None = None
    as_of: str | None = None
    max_age_seconds: float | None = None


class ErrorResponse(BaseModel):
    detail: str


class InvalidRequest(BaseModel):
    """422: FastAPI's list of errors (inputs echoed at most 10 items and 200 characters) and one line for a person."""

    detail: list[dict[str, Any]]
    message: str


class Health(BaseModel):
    status: Literal["alive"] = "alive"


class ServedRunInfo(BaseModel):
    model: str
    run_id: str
    as_of: str
    age_seconds: float
    rows: int


class Readiness(BaseModel):
    ready: bool
    model: str | None = None
    reason: str | None = None
    scores: ServedRunInfo | None = Field(None, description="The newest full batch run this Redis serves for the model, and its age.")
    rollout: str | None = Field(None, description="A newer bundle that was refused at rollout (the model named here keeps serving).")
