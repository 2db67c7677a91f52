"""Generated data for the benchmarks: made once per scale, shared by every benchmark.

`skewless generate --customers N --end 2026-11-01` into bench/results/data-<N>/ (SKEWLESS_BENCH_RESULTS moves it) (the same seed
and end give the same bytes, so any benchmark may reuse it); benchmarks hard-link the files into
the repo copies they run on. 10M customers take ~10 minutes and 4.5 GB.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from report import RESULTS, ROOT

DATA_END = "2026-11-01"
FILES = ("customer_profiles.parquet", "customer_activity.parquet", "churn_labels.parquet")


def generated(n: int) -> Path:
    """bench/results/data-<n>/ with the generated sources, generating them if missing."""
    data = RESULTS / f"data-{n}"
    if not all((data / f).exists() for f in FILES):
        print(f"generating {n:,} customers into {data}", file=sys.stderr, flush=True)
        # no event log: the batch and materialization benchmarks read the daily sources (10M customers would be 700M events)
        subprocess.run([sys.executable, "-m", "skewless", "generate", "--customers", str(n), "--end", DATA_END, "--out", str(data), "--no-events"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return data


def link_data(n: int, dest: Path) -> None:
    """Hard-link the generated sources for `n` customers into `dest` (a repo's data/ directory)."""
    source = generated(n)
    dest.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        (dest / f).unlink(missing_ok=True)
        try:
            os.link(source / f, dest / f)  # same bytes, no extra disk
        except OSError:
            shutil.copy(source / f, dest / f)
