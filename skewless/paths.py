"""Where things are unless a command is told otherwise.

Plain paths, no imports beyond the standard library: every command's `--help` and argument
checks read these, and must answer at once (tests/test_commands.py guards it).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = PROJECT_DIR / "feature_repo"  # the Feast repository
DATA_DIR = PROJECT_DIR / "data"  # what the pipeline writes: predictions, feature logs, reports
MODEL_DIR = Path(os.environ.get("SKEWLESS_MODEL_DIR", PROJECT_DIR / "models"))  # model bundles
PREDICTIONS_DB = DATA_DIR / "predictions.duckdb"
PREDICTIONS_DIR = DATA_DIR / "predictions"
FEATURE_LOG_DIR = DATA_DIR / "feature_log"
REDIS_ENV = "SKEWLESS_REDIS"  # the variable feature_store.yaml takes the Redis connection from
