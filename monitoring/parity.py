"""Online/batch parity on a sample: what /predict would answer now against the batch job's row now.

The parity tests (tests/test_parity.py) prove the paths equal on generated data; this is the
same comparison as a check a deployment runs on its own data after each load (the scheduled
pipeline's `online_batch_parity`, and its promotion gate for a new bundle): for a sample of
customers, the online read (Redis, TTLs applied, the registry's on-demand views: the service's
own `FeatureLookup`) scored by the one scoring function, against `run_batch` over the same IDs
at the same instant (point-in-time retrieval from the offline store) into a scratch DuckDB.
A value changed by hand in Redis, a view not loaded, a transform that drifted apart: each shows
as customers whose probabilities differ, or who are found on one side only.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

PROB_TOL = 1e-6  # the parity tests' tolerance on probabilities


@dataclass
class Parity:
    at: datetime
    compared: int = 0
    differing: list[tuple[int, float | None, float | None]] = field(default_factory=list)  # (customer, online, batch)

    @property
    def ok(self) -> bool:
        return not self.differing

    def describe(self) -> str:
        if self.ok:
            return f"{self.compared:,} customers: online equals batch at {self.at.isoformat()}"
        first = ", ".join(f"{c} (online {o}, batch {b})" for c, o, b in self.differing[:3])
        return f"{len(self.differing):,} of {self.compared:,} customers differ between online and batch at {self.at.isoformat()}: {first}"


def views_not_loaded(store, feature_service: str) -> list[str]:
    """Why this Redis cannot answer for `feature_service` yet (a view it reads has no watermark
    here, feast_plugins/watermark.py), or nothing: a comparison before that compares nothing."""
    from feast_plugins.watermark import check_views
    from online.features import FeatureLookup

    return check_views(store, [v for v, _ in FeatureLookup(store, feature_service).reads], with_budgets=False).problems


def parity_sample(store, bundle, customer_ids: list[int], at: datetime | None = None) -> Parity:
    """Score `customer_ids` online (Redis) and in batch (offline retrieval) at `at` (default now,
    whole seconds) and compare: equal within PROB_TOL, found on both sides or on neither."""
    import duckdb
    import pandas as pd

    from batch.job import NothingToScore, run_batch
    from online.features import FeatureLookup
    from skewless.score import score

    at = (at or datetime.now(timezone.utc)).replace(microsecond=0)
    ids = [int(c) for c in dict.fromkeys(customer_ids)]
    got = FeatureLookup(store, bundle.feature_service).lookup(ids, at)
    found = [i for i, ok in enumerate(got.found) if ok]
    online: dict[int, float] = {}
    if found:
        probs = score(bundle, {k: [v[i] for i in found] for k, v in got.values.items()}).probability
        online = {ids[i]: float(p) for i, p in zip(found, probs)}
    with tempfile.TemporaryDirectory(prefix="skewless-parity-") as tmp:
        try:
            run_batch(store, bundle, at, pd.Series(ids), Path(tmp) / "parity.duckdb", Path(tmp) / "parquet")
            with duckdb.connect(str(Path(tmp) / "parity.duckdb"), read_only=True) as con:
                batch = dict(con.execute("SELECT customer_id, churn_probability FROM churn_predictions").fetchall())
        except NothingToScore:
            batch = {}
    result = Parity(at, compared=len(ids))
    for c in ids:
        o, b = online.get(c), batch.get(c)
        if (o is None) != (b is None) or (o is not None and abs(o - b) > PROB_TOL):
            result.differing.append((c, o, b))
    return result
