"""The commands a new user types: they answer at once, and what the README and the demo print works.

- `skewless --help`, every subcommand's `--help` and argument errors import no heavy library
  (Feast, pandas, XGBoost, DuckDB, ...): checked on the modules loaded, not with a clock;
- the README's walkthrough blocks (marked `<!-- tested: ... -->`) run as they are, pasted into
  bash, in a fresh copy of the project with its own environment;
- `skewless demo-online` runs every command it prints exactly as printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from skewless.paths import PROJECT_DIR

HEAVY = ["feast", "pandas", "numpy", "pyarrow", "duckdb", "xgboost", "numba", "sklearn", "fastapi", "uvicorn", "matplotlib", "httpx", "redis"]
QUICK = [
    ["--help"], ["generate", "--help"], ["apply", "--help"], ["train", "--help"], ["model", "--help"],
    ["score", "--help"], ["explain", "--help"], ["quality", "--help"], ["score", "status", "--help"], ["score", "top", "--help"], ["materialize", "--help"],
    ["serve", "--help"], ["skew-report", "--help"], ["demo-online", "--help"], ["demo-summary", "--help"], ["scheduler", "--help"],
    # argument errors
    ["nope"], ["generate", "--customers", "many"], ["generate", "--customers", "0"], ["generate", "--end", "soon"],
    ["train", "--as-of", "soon"], ["score"], ["score", "--as-of", "yesterday-ish"], ["score", "--as-of", "now", "--customers", "/nonexistent"],
    ["explain"], ["explain", "--customer", "-1"], ["quality", "--since", "soon"], ["score", "--as-of", "now", "--explain-segment", "High"],
    ["score", "status", "--max-age", "soon"], ["score", "top", "-n", "0"], ["materialize", "--end", "soon"],
    ["materialize", "--lookback", "-1"], ["serve", "--workers", "0"], ["skew-report", "--since", "soon"],
    ["stream", "publish", "--customer", "5", "--type", "refund_issued"],  # refused before the bus: the event's schema alone
]
CHECK_IMPORTS = """
import json, sys
from skewless.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv, prog_name="skewless")
    except SystemExit as exc:
        codes.append(exc.code)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_and_argument_errors_import_nothing_heavy():
    r = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, json.dumps(QUICK), json.dumps(HEAVY)], capture_output=True, text=True, cwd=PROJECT_DIR)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    helps = sum(1 for argv in QUICK if argv[-1] == "--help")
    assert out["codes"][:helps] == [0] * helps and all(code not in (0, None) for code in out["codes"][helps:]), out["codes"]
    assert out["heavy"] == [], f"`skewless --help` and argument errors imported {out['heavy']}"
    assert "Traceback" not in r.stderr, r.stderr[-2000:]


def readme_blocks() -> list[str]:
    """The README's bash blocks marked as tested, in order."""
    text = (PROJECT_DIR / "README.md").read_text()
    return re.findall(r"<!-- tested: [^>]*-->\n```bash\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> Path:
    """The project as a new user has it: its files (git's view, untracked ones included), its own `make install`."""
    dest = tmp_path_factory.mktemp("fresh") / "skewless"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=PROJECT_DIR,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = PROJECT_DIR / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    uv = shutil.which("uv") or str(PROJECT_DIR / ".tools" / "bin" / "uv")
    r = subprocess.run(["make", "install", f"UV={uv}"], cwd=dest, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return dest


def clean_env() -> dict[str, str]:
    """The environment of a new shell: none of the variables the tests set."""
    drop = ("REDIS_URL", "SKEWLESS_", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR", "PYTEST")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@pytest.mark.parametrize("argv, expected", [
    (["materialize"], "run `skewless apply` first"), (["train"], "run `skewless generate` and `skewless apply` first"),
    (["score", "--as-of", "now"], "run `skewless train`"), (["serve", "--port", "0"], "run `skewless train`"),
    (["demo-summary"], "`make demo` runs every step"),
])
def test_a_new_checkout_says_what_to_run_first(fresh_copy, argv, expected):
    """Before the walkthrough below runs in the same copy: nothing generated, applied or trained yet."""
    assert not (fresh_copy / "models").exists(), "run this before the walkthrough"
    r = subprocess.run([str(fresh_copy / ".venv" / "bin" / "skewless"), *argv], cwd=fresh_copy, env=clean_env(),
                       capture_output=True, text=True, timeout=120)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and expected in lines[0], r.stdout + r.stderr


def test_readme_walkthrough_runs_as_pasted(fresh_copy):
    blocks = readme_blocks()
    assert len(blocks) == 2
    script = "set -euo pipefail\n" + "\n".join(blocks)
    r = subprocess.run(["bash", "-c", script], cwd=fresh_copy, env=clean_env(), capture_output=True, text=True, timeout=2400)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert '"churn_probability"' in r.stdout and '"status":"not_found"' in r.stdout  # the curl lines were answered
    assert "served rows differ from point-in-time truth" in r.stdout
    assert out.count("whole TTL window (no watermark") >= 4  # a new Redis, then the flushed one: 2 views each
    assert "from the watermark less the look-back" in r.stdout and "churn_v1" in r.stdout
    assert "1 applied, 0 unchanged, 1 dead-lettered, 1 scores published" in r.stdout and "unknown customer 999999999" in r.stdout
    assert not (fresh_copy / "registry.db").exists() and not (fresh_copy / "data" / "registry.db").exists()


def test_demo_online_runs_every_command_it_prints(live, tmp_path, monkeypatch):
    from skewless.cli import main

    monkeypatch.setenv("SKEWLESS_MODEL_DIR", str(live.model_dir))
    monkeypatch.setenv("SKEWLESS_FEATURE_LOG_DIR", str(tmp_path / "log"))
    r = CliRunner().invoke(main, ["demo-online", "--repo", str(live.repo), "--traffic", "50", "--result", str(tmp_path / "online.json")])
    assert r.exit_code == 0, r.output
    printed = [line[2:] for line in r.output.splitlines() if line.startswith("$ ")]
    assert len(printed) >= 6 and all("Content-Type: application/json" in c for c in printed if "-X POST" in c)
    result = json.loads((tmp_path / "online.json").read_text())
    assert len(result["answers"]) == 3 and all("churn_probability" in a for a in result["answers"])
