"""Request and response bodies of the churn service (they are also its OpenAPI schema).

Requests are strict: an ID is a JSON integer from 0 to 2^63-1 (the int64 join key), never a
string, float or bool, and unknown fields are refused, so a typo such as `customer_ids` sent to
/predict is a 422 naming the field rather than a silently different request.
"""

from __future__ import annotations

from typing import Annotated, Literal

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


class BatchResponse(BaseModel):
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    ready: bool
    model: str | None = None
    reason: str | None = None
