"""The batch scoring job: which customers, their features as of T, scores, outputs.

Features come only from point-in-time retrieval of the bundle's FeatureService
(batch/retrieval.py), scores only from the shared scoring function (training/score.py), so a
batch score for a customer at T is what the model would have been trained on at T.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from batch.outputs import PredictionWriter, RunKey
from batch.retrieval import active_customers, data_time_range, resolve, stream_features
from training.bundle import Bundle
from training.score import score

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DB = PROJECT_DIR / "data" / "predictions.duckdb"
DEFAULT_PARQUET = PROJECT_DIR / "data" / "predictions"


@dataclass
class BatchSummary:
    run_id: str
    as_of: datetime
    customers: int = 0
    by_segment: Counter = field(default_factory=Counter)
    with_missing_features: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"customers": 0.0, "retrieve": 0.0, "score": 0.0, "write": 0.0})
    top: pd.DataFrame | None = None

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def check_as_of(store, contract, as_of: datetime) -> None:
    """Refuse an as-of time in the future or before any data, with the valid range."""
    now = datetime.now(timezone.utc)
    if as_of > now:
        raise ValueError(f"--as-of {as_of.isoformat()} is in the future (now is {now.isoformat(timespec='seconds')})")
    first, last = data_time_range(store, contract)
    if as_of < first:
        raise ValueError(f"--as-of {as_of.isoformat()} is before any data (the sources start at {first.isoformat()})")


def run_batch(
    store,
    bundle: Bundle,
    as_of: datetime,
    customer_ids: pd.Series | None = None,
    db_path: Path = DEFAULT_DB,
    parquet_root: Path = DEFAULT_PARQUET,
    chunk_rows: int = 250_000,
    engine: str = "duckdb",
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> BatchSummary:
    contract = resolve(store, bundle.feature_service)
    check_as_of(store, contract, as_of)
    run_id = f"{as_of:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    summary = BatchSummary(run_id=run_id, as_of=as_of)

    t = time.perf_counter()
    ids = active_customers(store, as_of) if customer_ids is None else customer_ids
    summary.seconds["customers"] = time.perf_counter() - t
    if on_total:
        on_total(len(ids))

    bundle.booster.set_param({"nthread": 2})
    as_of_naive = as_of.astimezone(timezone.utc).replace(tzinfo=None)
    writer = PredictionWriter(db_path, parquet_root, RunKey(bundle.name, bundle.version, as_of_naive), run_id)
    tops: list[pd.DataFrame] = []
    try:
        t = time.perf_counter()
        for features in stream_features(store, contract, ids, as_of, chunk_rows, engine):
            summary.seconds["retrieve"] += time.perf_counter() - t
            t = time.perf_counter()
            s = score(bundle, features)
            out = s.to_frame()
            out.insert(0, "customer_id", features["customer_id"].to_numpy())
            out["churn_prediction"] = out["churn_prediction"].astype("int32")
            out["model_name"], out["model_version"] = bundle.name, bundle.version
            out["as_of"] = as_of_naive
            out["scored_at"] = datetime.now(timezone.utc).replace(tzinfo=None)
            out["run_id"] = run_id
            summary.with_missing_features += int(features[bundle.feature_names].isna().any(axis=1).sum())
            summary.by_segment.update(s.risk_segment)
            summary.customers += len(out)
            tops.append(out.nlargest(10, "churn_probability"))
            summary.seconds["score"] += time.perf_counter() - t
            t = time.perf_counter()
            writer.write(out)
            summary.seconds["write"] += time.perf_counter() - t
            if progress:
                progress(len(out))
            t = time.perf_counter()
        t = time.perf_counter()
        writer.commit()
        summary.seconds["write"] += time.perf_counter() - t
    except BaseException:
        writer.abort()
        raise
    if tops:
        summary.top = pd.concat(tops).nlargest(10, "churn_probability")
    return summary
