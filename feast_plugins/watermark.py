"""How far each feature view is complete in *this* Redis: the online store's own watermark.

Feast records materialized intervals in the registry, which every Redis the repo is pointed at
shares: after a flush, a fail-over or a new Redis, `materialize-incremental` would start from
the registry's last end and load only the tail, and the service would answer with half the
customers missing. So the Redis itself says what it holds, per feature view:

    key   skewless:watermark:<project>          (a hash; one field per feature view)
    field <view name as Feast stores it>
    value JSON {"end": ISO time, "end_us": int, "registry": <the registry's project UUID>,
                "project": ..., "definition": <fingerprint of the view>, "written_at": ISO time}

meaning: every row of the view up to `end` (Feast's point-in-time rule, with rows that had
arrived by then) is in this Redis, as loaded from the registry `registry` with the view
defined as `definition`. The materialization engine writes it after Redis has acknowledged
every write of a run (an interrupted or failed run leaves the previous watermark, so the next
run starts early enough), and only ever moves it forward. A flushed or new Redis has none; a
Redis loaded from another registry (another checkout under the same project name), or before
the view changed (a feature added, the TTL or the source changed), has one that does not
count. In each of these cases the next run, the stock `feast materialize-incremental`
included, loads the view's whole TTL window (feast_plugins/materialize_engine.py), and the
service is not ready until it has (online/service.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from skewless.definitions import fingerprint, view_spec

KEY_PREFIX = b"skewless:watermark:"
CADENCE_TAG = "cadence"  # feature view tag: how often new rows land, e.g. "1d" (budget = cadence + 1 day)
SLACK = timedelta(days=1)  # a freshness budget is one cadence and this: a run late by up to a day is fine
FULL_WINDOW_START = datetime(1970, 1, 1, tzinfo=timezone.utc)  # the start of a view without TTL

# Moves a view's watermark forward only: a run that ends earlier (a backfill of an old window)
# never moves it back. A watermark from another registry or definition is replaced.
ADVANCE_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local ok, w = pcall(cjson.decode, old)
  if ok and type(w) == 'table' and w.registry == ARGV[3] and w.definition == ARGV[4]
     and tonumber(w.end_us) and tonumber(w.end_us) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
return 1
"""


@dataclass(frozen=True)
class Watermark:
    view: str
    end: datetime
    registry: str
    project: str
    definition: str
    written_at: datetime

    def to_json(self) -> str:
        return json.dumps({
            "end": self.end.isoformat(), "end_us": _micros(self.end), "registry": self.registry, "project": self.project,
            "definition": self.definition, "written_at": self.written_at.isoformat(),
        })

    @classmethod
    def from_json(cls, view: str, raw: bytes | str) -> "Watermark | None":
        try:
            d = json.loads(raw)
            return cls(view, datetime.fromisoformat(d["end"]), str(d["registry"]), str(d["project"]), str(d["definition"]),
                       datetime.fromisoformat(d["written_at"]))
        except (ValueError, KeyError, TypeError):
            return None  # not ours, or corrupt: as if absent

    def age(self, now: datetime) -> timedelta:
        return now - self.end


def key(project: str) -> bytes:
    return KEY_PREFIX + project.encode()


def read_all(client, project: str) -> dict[str, Watermark]:
    """Every watermark this Redis holds for `project`, by view name (one HGETALL)."""
    out = {}
    for field, raw in client.hgetall(key(project)).items():
        view = field.decode() if isinstance(field, bytes) else field
        mark = Watermark.from_json(view, raw)
        if mark is not None:
            out[view] = mark
    return out


def advance(client, project: str, mark: Watermark) -> bool:
    """Store `mark` unless this Redis already holds a later one for the same registry and definition."""
    return bool(client.eval(ADVANCE_LUA, 1, key(project), mark.view, _micros(mark.end), mark.registry, mark.definition, mark.to_json()))


def registry_id(registry, project: str) -> str:
    """The registry's identity for `project`: when Feast created the project in it (to the
    microsecond), or the project UUID of registries that keep Feast's older project metadata.
    A teardown and re-apply, or another checkout's registry, gives another identity."""
    metadata = registry.list_project_metadata(project=project, allow_cache=True)
    if metadata and metadata[0].project_uuid:
        return metadata[0].project_uuid
    try:
        created = registry.get_project(project, allow_cache=True).created_timestamp
    except Exception:  # never applied: no identity, so no watermark can count
        return ""
    return f"{project}@{created.isoformat()}" if created else ""


def definition(view) -> str:
    """A fingerprint of what a view's online rows depend on: what its values mean (features and
    types, keys, TTL, time columns: skewless/definitions.py) and the source they are loaded from.

    Descriptions, tags and owners do not count; anything that changes which rows or values Redis
    should hold does, so a watermark written before such a change no longer counts.
    """
    src = view.batch_source
    return fingerprint({**view_spec(view), "path": getattr(src, "path", None) or getattr(src, "name", None)})


def held(marks: dict[str, Watermark], name: str, view, registry: str) -> Watermark | None:
    """The watermark of `view` (stored under `name`) that counts: same registry, same definition."""
    mark = marks.get(name)
    if mark is None or mark.registry != registry or mark.definition != definition(view):
        return None
    return mark


def why_not_held(marks: dict[str, Watermark], name: str, view, registry: str) -> str:
    """Why `held` found nothing, in words (for /ready and the CLI)."""
    mark = marks.get(name)
    if mark is None:
        return "no watermark (a new, flushed or replaced Redis, or never materialized)"
    if mark.registry != registry:
        return f"its watermark is from another Feast registry ({mark.registry or 'unknown'}, not this one)"
    return "its watermark predates a change to the view's definition"


def full_window_start(view, end: datetime) -> datetime:
    """Where a full load of a view starts: its TTL before `end` (everything when it has no TTL)."""
    if view.ttl and view.ttl.total_seconds() > 0:
        return end - view.ttl
    return FULL_WINDOW_START


def budget(view, override: timedelta | None = None) -> timedelta | None:
    """The freshness budget of a view: `override`, else its `cadence` tag plus a day (2 days for a
    daily view, 8 for a weekly one), else none."""
    if override is not None:
        return override
    cadence = (view.tags or {}).get(CADENCE_TAG)
    if not cadence:
        return None
    from skewless.times import parse_duration

    return parse_duration(cadence, f"the cadence tag of {view.name}") + SLACK


def _micros(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def describe(mark: Watermark | None, now: datetime) -> str:
    """`up to 2026-12-01 21:00 UTC (3.2h ago)`, or `none`."""
    if mark is None:
        return "none"
    return f"up to {mark.end.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC ({format_age(mark.age(now))} ago)"


def format_age(age: timedelta) -> str:
    s = age.total_seconds()
    if abs(s) < 120:
        return f"{s:.0f}s"
    if abs(s) < 7200:
        return f"{s / 60:.0f}m"
    if abs(s) < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


@dataclass(frozen=True)
class Freshness:
    """What the watermarks say about the views a model needs, at one instant."""

    ages: dict[str, float | None]  # view -> watermark age in seconds, None without a watermark that counts
    problems: list[str]  # one sentence per view that is missing or behind; empty = fresh

    @property
    def ok(self) -> bool:
        return not self.problems


def check(marks: dict[str, Watermark], views: list[tuple[str, object, timedelta | None]], registry: str, now: datetime) -> Freshness:
    """Freshness of `views` ([(name in Redis, view, budget)]) against this Redis's watermarks."""
    ages: dict[str, float | None] = {}
    problems = []
    for name, view, limit in views:
        mark = held(marks, name, view, registry)
        if mark is None:
            ages[view.name] = None
            problems.append(f"{view.name}: {why_not_held(marks, name, view, registry)}: run `skewless materialize`")
            continue
        age = mark.age(now)
        ages[view.name] = age.total_seconds()
        if limit is not None and age > limit:
            problems.append(f"{view.name}: materialized {describe(mark, now)}, over its freshness budget of {format_age(limit)}: "
                            "the materialization schedule is behind")
    return Freshness(ages, problems)


def check_views(store, views, with_budgets: bool = True) -> Freshness:
    """This Redis's watermarks (the store's own client) against `views`: each loaded from this
    registry and, `with_budgets`, within its freshness budget (`budget`)."""
    from feast_plugins.redis_layout import view_name
    from feast_plugins.redis_server import store_client

    needs = [(view_name(v, store.config), v, budget(v) if with_budgets else None) for v in views]
    return check(read_all(store_client(store), store.project), needs, registry_id(store.registry, store.project), datetime.now(timezone.utc))


def parse_budgets(text: str | None) -> tuple[timedelta | None, dict[str, timedelta]]:
    """`36h` (every view) or `customer_activity=36h,customer_profile=3d` (per view) -> (all, per view)."""
    from skewless.times import parse_duration

    every, per_view = None, {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, sep, value = part.rpartition("=")
        if sep:
            per_view[name.strip()] = parse_duration(value.strip(), f"freshness budget of {name.strip()}")
        else:
            every = parse_duration(value, "freshness budget")
    return every, per_view
