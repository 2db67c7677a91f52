"""Which batch run's scores this Redis serves, per model: the record behind "freshness that cannot lie".

A scores view (tag `kind: scores`, `churn_scores` in feature_repo/) holds each customer's latest
score, and its rows carry the run that wrote them. Serving precomputed scores fails silently
when the batch job stops: apps keep reading last month's list as if it were current. So after
every load of a scores view into Redis, the materialization engine records, per model, the
newest *full* run (every active customer; ad-hoc runs over a list of IDs do not count) among
the rows the view holds up to its watermark, read from the view's own Parquet source:

    key   skewless:runs:<project>    (a hash; one field per model name)
    value JSON {"model_name", "model_version", "run_id", "as_of", "scored_at", "rows", "recorded_at"}

The service reports its age on /ready and in Prometheus, and `skewless score status` compares it
with the newest full run in DuckDB (same run? same row count?).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

KEY_PREFIX = b"skewless:runs:"
SCORES_KIND = "scores"  # the `kind` tag of a view whose rows are model scores with their run


@dataclass(frozen=True)
class ServedRun:
    model_name: str
    model_version: str
    run_id: str
    as_of: datetime  # UTC
    scored_at: datetime  # UTC
    rows: int
    recorded_at: datetime

    def to_json(self) -> str:
        return json.dumps({k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()})

    @classmethod
    def from_json(cls, raw: bytes | str) -> "ServedRun | None":
        try:
            d = json.loads(raw)
            return cls(d["model_name"], d["model_version"], d["run_id"], datetime.fromisoformat(d["as_of"]),
                       datetime.fromisoformat(d["scored_at"]), int(d["rows"]), datetime.fromisoformat(d["recorded_at"]))
        except (ValueError, KeyError, TypeError):
            return None

    def age(self, now: datetime):
        return now - self.as_of


def key(project: str) -> bytes:
    return KEY_PREFIX + project.encode()


def is_scores_view(view) -> bool:
    return (view.tags or {}).get("kind") == SCORES_KIND


def scores_view(store):
    """The registry's scores view (tag `kind: scores`), or None when the repo has none."""
    return next((v for v in store.list_feature_views() if is_scores_view(v)), None)


def read_runs(client, project: str) -> dict[str, ServedRun]:
    """The served run per model name (one HGETALL)."""
    out = {}
    for field, raw in client.hgetall(key(project)).items():
        run = ServedRun.from_json(raw)
        if run is not None:
            out[field.decode() if isinstance(field, bytes) else field] = run
    return out


def newest_full_runs(source_glob: str, up_to: datetime, after: dict[str, ServedRun]) -> list[ServedRun]:
    """Per model, the newest full run in the view's Parquet files with an as-of up to `up_to`,
    newer than the one already recorded (`after`), with its row count. Reads only the run columns,
    and only files past the recorded as-of (Parquet statistics prune the rest)."""
    import glob

    import duckdb

    if not glob.glob(source_glob, recursive=True):
        return []
    floor = min((r.as_of for r in after.values()), default=datetime(1970, 1, 1, tzinfo=timezone.utc))
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(
            """
            WITH runs AS (
                SELECT model_name, model_version, run_id, CAST(as_of AS TIMESTAMPTZ) AS as_of,
                       max(CAST(scored_at AS TIMESTAMPTZ)) AS scored_at, count(*) AS rows
                FROM read_parquet(?, hive_partitioning = false, union_by_name = true)
                WHERE run_kind = 'full' AND CAST(as_of AS TIMESTAMPTZ) <= ? AND CAST(as_of AS TIMESTAMPTZ) >= ?
                GROUP BY ALL
            )
            SELECT model_name, arg_max(model_version, (as_of, scored_at)), arg_max(run_id, (as_of, scored_at)),
                   max(as_of), arg_max(scored_at, (as_of, scored_at)), arg_max(rows, (as_of, scored_at))
            FROM runs GROUP BY model_name
            """,
            [source_glob, up_to, floor],
        ).fetchall()
    now = datetime.now(timezone.utc)
    out = []
    for model, version, run_id, as_of, scored_at, count in rows:
        previous = after.get(model)
        if previous is None or (as_of, scored_at) > (previous.as_of, previous.scored_at):
            out.append(ServedRun(model, version, run_id, as_of.astimezone(timezone.utc), scored_at.astimezone(timezone.utc), int(count), now))
    return out


def record(client, project: str, source_glob: str, up_to: datetime) -> list[ServedRun]:
    """After a load of the scores view up to `up_to`: record each model's newest full run (forward only)."""
    runs = newest_full_runs(source_glob, up_to, read_runs(client, project))
    for run in runs:
        client.hset(key(project), run.model_name, run.to_json())
    return runs
