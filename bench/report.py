"""Where the benchmarks keep their results, and the stamp line that heads every table they print.

A table in docs/benchmarks.md is a benchmark's own output pasted in, so it carries the date,
the commit it measured, the CPUs and the machine: refreshing the page means running the bench.
`SKEWLESS_BENCH_RESULTS` moves the results (and the generated data) elsewhere: the smoke runs in
`make test` write to a temporary directory.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("SKEWLESS_BENCH_RESULTS") or ROOT / "bench" / "results")


def commit() -> str:
    """The checkout's short commit, `+` when the work tree differs from it, or `unknown` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("+" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp(what: str) -> str:
    """`_<what>: 2026-12-07 21:50 UTC, commit abc1234, 2 CPUs, Linux x86_64_`: the line above a table."""
    now = datetime.now(timezone.utc)
    return f"_{what}: {now:%Y-%m-%d %H:%M} UTC, commit {commit()}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}_"
