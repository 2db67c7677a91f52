"""`skewless skew-report`: skew found where it is and nowhere else, and a page a browser renders.

The page is opened in headless Chromium (Debian's `chromium`, which `make test` installs when
missing, as it does Redis) from the file itself, with no server: its tables are there and
every image decodes.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from monitoring.feature_log import read_log
from online.app import create_app
from online.settings import Settings
from skewless.cli import main
from synthetic.generate import PROFILES_FILE


def chromium_dom(page, tmp_path) -> str:
    """The page's DOM after load, as headless Chromium renders it from the file."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
             "--virtual-time-budget=10000", "--dump-dom"]
    r = subprocess.run([chromium, *flags, page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def served_log(live, tmp_path_factory):
    ids = pd.read_parquet(live.repo / "data" / PROFILES_FILE, columns=["customer_id"])["customer_id"].drop_duplicates()
    log_dir = tmp_path_factory.mktemp("report") / "log"
    settings = Settings(repo_path=live.repo, model_dir=live.model_dir, feature_log_dir=log_dir)
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict/batch", json={"customer_ids": ids.sample(80, random_state=2).tolist()}).status_code == 200
    return log_dir


def report_args(live, log_dir, tmp_path):
    return ["skew-report", "--repo", str(live.repo), "--model-dir", str(live.model_dir), "--log-dir", str(log_dir),
            "--db", str(tmp_path / "none.duckdb"), "--html", str(tmp_path / "report.html"), "--min-customers", "50"]


def test_clean_logs_have_no_skew_and_the_page_renders(live, served_log, tmp_path):
    r = CliRunner().invoke(main, report_args(live, served_log, tmp_path) + ["--max-psi", "100"])
    assert r.exit_code == 0, r.output
    served = len(read_log(served_log))
    assert f"0 of {served:,} served rows differ from point-in-time truth" in r.output and "login_trend" in r.output
    assert (tmp_path / "report.png").stat().st_size > 1000
    dom = chromium_dom(tmp_path / "report.html", tmp_path)
    assert "No skew" in dom and f"0 of {served:,} served rows" in dom
    assert live.bundle.version in dom and "churn_v1" in dom
    skew_rows = re.findall(r"<tr><td>([a-z_0-9]+)</td><td class=\"num\">", dom.split('id="skew"')[1].split("</table>")[0])
    assert skew_rows == live.bundle.feature_names  # the skew table first, one row per feature
    assert 'id="drift"' in dom and dom.index('id="skew"') < dom.index('id="drift"')
    assert 'data-images-rendered="1/1"' in dom  # the PSI chart; nothing alerts at PSI 100


def test_a_changed_served_value_is_caught_and_alerting_features_are_charted(live, served_log, tmp_path):
    log = read_log(served_log).to_pandas()
    row = log["spend_30d"].first_valid_index()
    log.loc[row, "spend_30d"] += 1.0  # a value training would not have seen
    changed = tmp_path / "log"
    (changed / "date=x").mkdir(parents=True)
    log.to_parquet(changed / "date=x" / "part-1-1.parquet")
    r = CliRunner().invoke(main, report_args(live, changed, tmp_path) + ["--max-psi", "0"])  # every feature alerts
    assert r.exit_code == 1 and "skew in spend_30d" in r.output and "drift in" in r.output, r.output
    dom = chromium_dom(tmp_path / "report.html", tmp_path)
    assert "Skew in 1 feature(s)" in dom and f"1 of {len(log):,} served rows" in dom
    drifting = sum(1 for line in r.output.splitlines() if line.startswith("served feature") and line.endswith("ALERT"))
    n = drifting + 1  # the PSI chart and one training-beside-served chart per alerting feature
    assert drifting > 10 and f'data-images-rendered="{n}/{n}"' in dom
