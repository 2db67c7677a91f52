"""The batch scoring job: which customers, their features as of T, scores, outputs.

Features come only from Feast's point-in-time retrieval of the bundle's FeatureService
(batch/retrieval.py), scores only from the shared scoring function (skewless/score.py), so a
batch score for a customer at T is the score the model would have been trained on at T.
Customers go through in chunks of `chunk_rows` (retrieval runs one chunk ahead in a
background thread; DuckDB and XGBoost release the GIL), so memory stays bounded at any
customer count; outputs are staged and swapped in at the end (batch/outputs.py).

The rules every path shares: a customer with no value from any feature view at T is not found
(skewless/contract.py:found), as the service answers 404 for it: counted, listed in the
summary, not scored. An as-of before a view's data starts is refused, since every customer
would miss that view's features.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batch.outputs import PredictionWriter, RunKey
from batch.retrieval import (
    DEFAULT_CHUNK_ROWS,
    active_customers,
    resolve,
    source_time_ranges,
    stream_features,
)
from batch.stages import StageClock, peak_rss_bytes
from skewless.bundle import Bundle
from skewless.paths import DATA_DIR, PREDICTIONS_DB, PREDICTIONS_DIR
from skewless.prefetch import prefetch
from skewless.score import score

DEFAULT_OUT_DIR = DATA_DIR
DEFAULT_DB = PREDICTIONS_DB
DEFAULT_PARQUET = PREDICTIONS_DIR


class NothingToScore(ValueError):
    """The run has no customers (none active at the as-of time, or an empty list)."""


@dataclass
class BatchSummary:
    run_id: str
    as_of: datetime
    model: str
    customers: int = 0
    by_segment: Counter = field(default_factory=Counter)
    with_missing_features: int = 0  # at least one model input missing (null)
    with_unseen_category: int = 0  # a category the model never saw (scored as missing)
    not_found: list[int] = field(default_factory=list)  # asked for, but no feature-view value at T: not scored
    explained: int = 0  # customers whose reasons went to churn_reasons
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> busy seconds
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # stage -> peak RSS while it ran
    wall_seconds: float = 0.0
    process_peak_rss_mb: float = 0.0
    warnings: list[str] = field(default_factory=list)
    chunk_seconds: list[dict[str, float]] = field(default_factory=list)  # per chunk, where an engine reports it

    def add(self, chunk: "ScoredChunk") -> None:
        self.customers += chunk.table.num_rows
        self.not_found += chunk.not_found
        self.with_missing_features += chunk.with_missing_features
        self.with_unseen_category += chunk.with_unseen_category
        self.by_segment.update(chunk.by_segment)
        if chunk.seconds:
            self.chunk_seconds.append(chunk.seconds)

    @property
    def rows_per_second(self) -> float:
        return self.customers / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "as_of": self.as_of.isoformat(),
            "model": self.model,
            "customers": self.customers,
            "by_segment": dict(self.by_segment),
            "with_missing_features": self.with_missing_features,
            "not_found": self.not_found,
            "with_unseen_category": self.with_unseen_category,
            "explained": self.explained,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "peak_rss_mb": {k: round(v, 1) for k, v in self.peak_rss_mb.items()},
            "wall_seconds": round(self.wall_seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "process_peak_rss_mb": round(self.process_peak_rss_mb, 1),
            "warnings": self.warnings,
            "chunk_seconds": self.chunk_seconds,
        }


def check_as_of(store, contract, as_of: datetime) -> list[str]:
    """Refuse an as-of time in the future or before any data, naming the valid range.

    Returns warnings for views whose every row has expired by `as_of` (newest event older than
    the view's TTL): legal, the features are null as Feast would give them, but usually a sign
    of a stale upstream export or a mistyped as-of time.
    """
    now = datetime.now(timezone.utc)
    if as_of > now:
        raise ValueError(f"--as-of {as_of.isoformat()} is in the future (now is {now.isoformat(timespec='seconds')}): scores can only use what is known")
    ranges = source_time_ranges(store, contract)
    empty = [name for name, r in ranges.items() if r is None]
    if empty:
        raise ValueError(f"the source of {', '.join(empty)} holds no rows: run `skewless generate` (or load the source)")
    late_start = max(ranges.items(), key=lambda item: item[1][0])
    if as_of < late_start[1][0]:
        raise ValueError(f"--as-of {as_of.isoformat()} is before the data of {late_start[0]}, which starts at "
                         f"{late_start[1][0].isoformat()}: every customer would miss its features")
    warnings = []
    for view in contract.views:
        newest = ranges.get(view.name)
        if view.ttl and newest is not None and as_of - newest[1] > view.ttl:
            warnings.append(f"every row of {view.name} has expired at {as_of.isoformat()} (newest {newest[1]:%Y-%m-%d %H:%M}, TTL {view.ttl.days}d): its features are null for all customers")
    return warnings


def prediction_table(ids: np.ndarray, scores, bundle: Bundle, as_of: datetime, scored_at: datetime, run_id: str, kind: str) -> pa.Table:
    """One chunk of output rows (the churn_predictions schema); times are naive UTC."""
    n = len(ids)

    def const(value, type_: pa.DataType) -> pa.Array:
        return pa.repeat(pa.scalar(value, type_), n) if n else pa.array([], type_)

    return pa.table(
        {
            "customer_id": pa.array(ids, pa.int64()),
            "churn_probability": pa.array(scores.probability, pa.float64()),
            "churn_prediction": pa.array(np.asarray(scores.prediction, dtype=np.int32), pa.int32()),
            "risk_segment": pa.array(scores.risk_segment, pa.string()),
            "model_name": const(bundle.name, pa.string()),
            "model_version": const(bundle.version, pa.string()),
            "as_of": const(as_of, pa.timestamp("us")),
            "scored_at": const(scored_at, pa.timestamp("us")),
            "run_id": const(run_id, pa.string()),
            "run_kind": const(kind, pa.string()),
        }
    )


def first_ids(ids: list[int], n: int = 10) -> str:
    """`1, 2, 3 and 7 more`: a list of IDs for a one-line message."""
    shown = ", ".join(str(i) for i in ids[:n])
    return shown + (f" and {len(ids) - n:,} more" if len(ids) > n else "")


def _cores() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _count_inputs(bundle: Bundle, frame: pd.DataFrame) -> tuple[int, int]:
    """(rows with a missing input, rows with an unseen category)."""
    missing = frame[bundle.feature_names].isna()
    unseen = np.zeros(len(frame), dtype=bool)
    for spec in bundle.features:
        if spec.is_categorical:
            col = frame[spec.name]
            unseen |= (col.notna() & ~col.isin(list(spec.categories or ()))).to_numpy()
    return int(missing.any(axis=1).sum()), int(unseen.sum())


@dataclass(frozen=True)
class RunInfo:
    """What every output row of a run carries (small and picklable: a Ray task gets it)."""

    run_id: str
    as_of: datetime  # UTC
    scored_at: datetime  # naive UTC
    kind: str  # full | ad-hoc
    explain_top: int = 0  # reasons per explained customer (0: no explanations)
    explain_segments: tuple[str, ...] = ()  # whose: these risk segments only (empty: everyone scored)


@dataclass
class ScoredChunk:
    """One chunk of customers, scored: the output rows and the counts the run summary adds up."""

    index: int  # the chunk's place in the run (a retried chunk has the same)
    table: pa.Table
    processed: int  # customers asked for
    not_found: list[int]
    with_missing_features: int
    with_unseen_category: int
    by_segment: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)  # where the chunk's time went
    reasons: pa.Table | None = None  # with RunInfo.explain_top: rows of batch/outputs.py REASONS_SCHEMA


def score_frame(index: int, bundle: Bundle, contract, frame: pd.DataFrame, run: RunInfo) -> ScoredChunk:
    """Score one chunk of retrieved features: the customers with none are not found, the rest scored."""
    processed = len(frame)
    found = contract.found(frame)
    not_found = frame.loc[~found, "customer_id"].astype("int64").tolist() if not found.all() else []
    if not_found:
        frame = frame[found]
    s = score(bundle, frame)
    ids = frame["customer_id"].to_numpy(dtype=np.int64)
    table = prediction_table(ids, s, bundle, run.as_of.replace(tzinfo=None), run.scored_at, run.run_id, run.kind)
    missing, unseen = _count_inputs(bundle, frame)
    segments, counts = np.unique(np.asarray(s.risk_segment, dtype=object).astype(str), return_counts=True)
    reasons = reasons_table(bundle, frame, ids, s.risk_segment, run) if run.explain_top else None
    return ScoredChunk(index, table, processed, not_found, missing, unseen, dict(zip(segments.tolist(), counts.tolist())), reasons=reasons)


def reasons_table(bundle: Bundle, frame: pd.DataFrame, ids: np.ndarray, segments: list[str], run: RunInfo) -> pa.Table:
    """The top `run.explain_top` reasons of the chunk's customers in `run.explain_segments`
    (skewless/explain.py: the same bundle, the same feature rows as their scores)."""
    from skewless.explain import explain

    wanted = np.ones(len(ids), dtype=bool) if not run.explain_segments else np.isin(np.asarray(segments, dtype=object), run.explain_segments)
    rows = frame[wanted]
    out: dict[str, list] = {n: [] for n in ("customer_id", "rank", "feature", "value", "contribution", "direction", "base_value")}
    for cid, why in zip(ids[wanted].tolist(), explain(bundle, rows, run.explain_top)):
        for rank, r in enumerate(why.reasons, start=1):
            out["customer_id"].append(cid)
            out["rank"].append(rank)
            out["feature"].append(r.feature)
            out["value"].append(None if r.value is None else str(r.value))
            out["contribution"].append(r.contribution)
            out["direction"].append(r.direction)
            out["base_value"].append(why.base_value)
    n = len(out["customer_id"])
    as_of = run.as_of.replace(tzinfo=None)
    return pa.table(out | {"model_name": [bundle.name] * n, "model_version": [bundle.version] * n, "as_of": [as_of] * n, "run_id": [run.run_id] * n})


def local_chunks(store, bundle: Bundle, contract, ids: np.ndarray, as_of: datetime, chunk_rows: int, run: RunInfo,
                 clock: StageClock) -> Iterator[ScoredChunk]:
    """The single-machine engine: retrieval one chunk ahead in a thread, scoring here."""
    bundle.scoring_threads = _cores()
    parts: dict[str, float] = {}
    # Feast runs only in the prefetch thread from here on: nothing else uses its connections;
    # closing() joins that thread before the run goes on
    features = stream_features(store, contract, ids, as_of, chunk_rows, seconds=parts)
    frames = prefetch(features, step=lambda: clock.stage("retrieve"), name="batch-retrieval")
    with contextlib.closing(frames):
        for index, frame in enumerate(frames):
            with clock.stage("score"):
                chunk = score_frame(index, bundle, contract, frame, run)
            yield chunk
    for name, secs in parts.items():
        clock.add(f"retrieve.{name}", secs)


Engine = Callable[..., Iterator[ScoredChunk]]  # (store, bundle, contract, ids, as_of, chunk_rows, run, clock) -> chunks


def run_batch(
    store,
    bundle: Bundle,
    as_of: datetime,
    customer_ids: pd.Series | None = None,
    db_path: Path = DEFAULT_DB,
    parquet_root: Path = DEFAULT_PARQUET,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    engine: Engine = local_chunks,
    explain_top: int = 0,
    explain_segments: tuple[str, ...] = (),
) -> BatchSummary:
    """Score `customer_ids` (default: everyone active at `as_of`) and swap the run into the outputs.

    `engine` produces the scored chunks: `local_chunks` here, or batch/ray_engine.py's on a
    Ray cluster; either way the rows go through this one writer and one commit. Nothing
    readers see changes unless the whole run succeeds; any error discards the staged rows.
    With `explain_top`, the customers in `explain_segments` (all when empty) get their top
    reasons in the churn_reasons table, committed with the predictions.
    """
    if as_of.tzinfo is None:
        raise ValueError(f"as-of time {as_of.isoformat()} has no time zone")
    as_of = as_of.astimezone(timezone.utc)
    clock = StageClock()
    summary: BatchSummary | None = None
    try:
        contract = resolve(store, bundle.feature_service)
        warnings = check_as_of(store, contract, as_of)
        kind = "full" if customer_ids is None else "ad-hoc"
        run = RunInfo(f"{as_of:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}", as_of, datetime.now(timezone.utc).replace(tzinfo=None), kind,
                      explain_top, tuple(explain_segments))
        summary = BatchSummary(run_id=run.run_id, as_of=as_of, model=f"{bundle.name}/{bundle.version}", warnings=warnings)
        # outputs first: an unwritable path fails now, not after minutes of retrieval
        writer = PredictionWriter(db_path, parquet_root, RunKey(bundle.name, bundle.version, as_of.replace(tzinfo=None)), run.run_id, kind)
        try:
            with clock.stage("customers"):
                if customer_ids is None:
                    ids = active_customers(store, as_of).to_numpy()
                else:
                    ids = np.unique(np.asarray(customer_ids, dtype=np.int64))
            if len(ids) == 0:
                what = "no customer is active" if customer_ids is None else "the customer list is empty"
                raise NothingToScore(f"nothing to score: {what} at {as_of.isoformat()}")
            if on_total:
                on_total(len(ids))
            seen: set[int] = set()
            for chunk in engine(store, bundle, contract, ids, as_of, chunk_rows, run, clock):
                if chunk.index in seen:
                    continue  # a chunk computed twice (a retried task): its rows are in already
                seen.add(chunk.index)
                summary.add(chunk)
                with clock.stage("write"):
                    writer.write(chunk.table)
                    if chunk.reasons is not None:
                        writer.write_reasons(chunk.reasons)
                        summary.explained += pc.count_distinct(chunk.reasons["customer_id"]).as_py()
                if progress:
                    progress(chunk.processed)
            if summary.customers == 0:
                raise NothingToScore(f"nothing to score: none of the {len(ids):,} customers has features at {as_of.isoformat()} "
                                     f"(not found: {first_ids(summary.not_found)})")
            with clock.stage("commit"):
                writer.commit(run.scored_at, len(summary.not_found))
        except BaseException:
            writer.abort()
            raise
        return summary
    finally:
        clock.close()
        if summary is not None:
            summary.seconds = dict(clock.seconds)
            summary.peak_rss_mb = {k: v / 2**20 for k, v in clock.peak_rss.items()}
            summary.wall_seconds = clock.wall_seconds
            summary.process_peak_rss_mb = peak_rss_bytes() / 2**20
