"""Times and durations as users type them: `--as-of now`, `--end 2026-11-01T00:00:00Z`, `--max-age 26h`.

Plain functions raising ValueError with a message a person can act on; the `skewless` command
turns it into one line and exit code 1.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str) -> datetime:
    """An ISO 8601 time (UTC when no zone is given) or `now`, timezone-aware."""
    if value == "now":
        return datetime.now(timezone.utc)
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a time: {value!r} (use ISO 8601, e.g. 2026-11-01T00:00:00Z, or `now`)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def parse_duration(value: str, option: str = "duration") -> timedelta:
    """A duration like 26h, 90m, 2d, 1d12h or 45s; ValueError naming `option` otherwise."""
    text = value.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{option} {value!r} is not a duration (e.g. 26h, 90m, 2d, 1d12h)")
    age = timedelta(0)
    for number, unit in parts:
        age += timedelta(**{_UNITS[unit]: float(number)})
    if age <= timedelta(0):
        raise ValueError(f"{option} {value!r} must be longer than zero")
    return age


def data_end(value: str) -> datetime:
    """When generated data ends: `today` is midnight UTC (the same bytes all day for a seed),
    `now` or an ISO time that moment to the second (data that is fresh when a demo serves it)."""
    if value == "today":
        return datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return parse_time(value).astimezone(timezone.utc).replace(microsecond=0)
