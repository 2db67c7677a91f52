"""Training sets by point-in-time retrieval only.

The label table (customer_id, label time, churned) becomes Feast's entity frame and every
feature comes from `get_historical_features(features=<FeatureService>)` on the DuckDB offline
store, as it was known at each label time: a row counts from its event time, but only once it
had arrived (`created` at or before the label time; Feast's filter_by_created_timestamp). Nothing is computed here: derived features live in
the Feast repo's on-demand view. The request-time input of that view (`as_of`) is the label
time, exactly as batch passes its run time and the service the request time.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skewless.contract import feature_service
from skewless.labels import LABEL_HORIZON_DAYS, LABELS_FILE

KEYS = ["customer_id", "event_timestamp"]
REQUEST_TIME = "as_of"  # the RequestSource field of feature_repo's on-demand view


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # keys, label, true probability, then the service's features
    feature_service: str
    features: list[str]
    metadata: dict = field(default_factory=dict)


def entity_frame(keys: pd.DataFrame) -> pd.DataFrame:
    """Feast's entity frame for (customer_id, event_timestamp) rows, with the request time."""
    entity = keys[KEYS].copy()
    entity[REQUEST_TIME] = entity["event_timestamp"]
    return entity


def historical_features(store, service_name: str, keys: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features for `keys`, joined back on keys (the DuckDB store reorders rows)."""
    service = feature_service(store, service_name)
    entity = entity_frame(keys)
    # filter_by_created_timestamp: a row counts only from when it arrived (`created`), as it
    # does online, where a row is in Redis only once it has been materialized.
    out = store.get_historical_features(entity_df=entity, features=service, filter_by_created_timestamp=True).to_df()
    names = [f.name for p in service.feature_view_projections for f in p.features]
    out = out[KEYS + names]
    return entity[KEYS].merge(out, on=KEYS, how="left", validate="1:1")


def load_labels(repo_path: Path, as_of: datetime | None = None, max_rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Labels whose 30-day outcome was known by `as_of` (all of them when None).

    A label at time L is only known at L + 30 days; training "as of" a time must not use the
    outcome of later labels. `max_rows` samples whole customers (stable under the seed) so a
    customer's label history stays together.
    """
    path = Path(repo_path) / "data" / LABELS_FILE
    if not path.is_file():
        raise ValueError(f"no labels to train on: {path} is missing; run `skewless generate` and `skewless apply` first")
    labels = pd.read_parquet(path)
    if as_of is not None:
        labels = labels[labels["event_timestamp"] + timedelta(days=LABEL_HORIZON_DAYS) <= as_of]
    if labels.empty:
        when = f" known by {as_of.isoformat()}" if as_of else ""
        raise ValueError(f"no labels{when} in {Path(repo_path) / 'data' / LABELS_FILE}: generate data or pick a later --as-of")
    if max_rows and len(labels) > max_rows:
        customers = labels["customer_id"].drop_duplicates().sample(frac=1.0, random_state=seed)
        share = max_rows / len(labels)
        keep = set(customers.iloc[: max(1, int(len(customers) * share))])
        labels = labels[labels["customer_id"].isin(keep)]
    return labels.sort_values(KEYS, kind="mergesort").reset_index(drop=True)


def build_training_set(store, repo_path: Path, service_name: str, as_of: datetime | None = None, max_rows: int | None = None) -> TrainingSet:
    labels = load_labels(repo_path, as_of, max_rows)
    started = time.perf_counter()
    feats = historical_features(store, service_name, labels)
    seconds = time.perf_counter() - started
    frame = labels.merge(feats, on=KEYS, how="left", validate="1:1")
    names = [c for c in feats.columns if c not in KEYS]
    return TrainingSet(
        frame=frame,
        feature_service=service_name,
        features=names,
        metadata={
            "feature_service": service_name,
            "feast_project": store.project,
            "as_of": as_of.isoformat() if as_of else None,
            "rows": len(frame),
            "customers": int(frame["customer_id"].nunique()),
            "label_from": frame["event_timestamp"].min().isoformat(),
            "label_to": frame["event_timestamp"].max().isoformat(),
            "retrieval_seconds": round(seconds, 2),
            "max_rows": max_rows,
        },
    )


def write_training_set(ts: TrainingSet, path: Path) -> str:
    """Write the set as Parquet with its metadata in the file; return its sha256 fingerprint."""
    table = pa.Table.from_pandas(ts.frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"skewless"] = json.dumps(ts.metadata).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
