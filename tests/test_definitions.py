"""The Feast repository applies with the stock CLI and registers the whole contract."""

from __future__ import annotations

from conftest import copy_repo, feast_apply

from feast_plugins import watermark
from skewless.store import open_store

SERVICE_FEATURES = [
    "plan", "region", "seats", "monthly_fee",
    "logins_7d", "logins_30d", "active_minutes_7d", "active_minutes_30d",
    "support_tickets_7d", "support_tickets_30d", "payment_failures_7d", "payment_failures_30d",
    "spend_7d", "spend_30d",
    "tenure_days", "days_since_last_active", "minutes_per_seat_7d", "login_trend", "fee_per_seat",
]


def test_registry_lists_the_contract(small_store):
    fs = small_store
    assert [e.name for e in fs.list_entities()] == ["customer"]
    assert fs.get_entity("customer").join_key == "customer_id"
    assert sorted(v.name for v in fs.list_feature_views()) == ["account_state", "churn_scores", "customer_activity", "customer_profile"]
    odfvs = fs.list_on_demand_feature_views()
    assert sorted(v.name for v in odfvs) == ["account_live", "customer_derived"]
    assert {o.mode for o in odfvs} == {"python"}
    svc = fs.get_feature_service("churn_v1")
    assert [f.name for p in svc.feature_view_projections for f in p.features] == SERVICE_FEATURES
    v2 = fs.get_feature_service("churn_v2")  # churn_v1 and the live features
    assert [f.name for p in v2.feature_view_projections for f in p.features] == SERVICE_FEATURES + [
        "payment_failures_24h", "support_tickets_24h", "hours_since_last_payment_failure", "seats_now"]
    assert fs.get_feature_view("account_state").stream_source.name == "account_state_push"


def test_every_declaration_has_description_and_owner(small_store):
    fs = small_store
    objects = [*fs.list_entities(), *fs.list_feature_views(), *fs.list_on_demand_feature_views(),
               *fs.list_feature_services(), *fs.list_data_sources()]
    for obj in objects:
        assert obj.description, obj.name
        assert obj.owner, obj.name
        assert obj.tags.get("team"), obj.name


def test_apply_is_idempotent_and_works_on_a_fresh_copy(tmp_path, redis_endpoint, small_repo):
    import shutil

    repo = copy_repo(tmp_path / "feature_repo")
    for f in (small_repo / "data").glob("*.parquet"):
        shutil.copy(f, repo / "data")
    first = feast_apply(repo, redis_endpoint)
    assert first.returncode == 0, first.stderr
    second = feast_apply(repo, redis_endpoint)
    assert second.returncode == 0, second.stderr
    assert (repo / "data" / "registry.db").exists()
    assert open_store(repo).get_feature_service("churn_v1").name == "churn_v1"


def test_stock_cli_materialize_incremental(tmp_path, redis_endpoint, small_repo, monkeypatch):
    """`cd feature_repo && feast materialize-incremental <ts>` works as a user runs it, through
    the skewless engine that feature_store.yaml names; `feast get-online-features` then runs the
    on-demand views on what it loaded."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from feast_plugins.redis_server import throwaway_redis
    from skewless.store import REDIS_ENV

    repo = copy_repo(tmp_path / "feature_repo")
    for f in (small_repo / "data").glob("*.parquet"):
        shutil.copy(f, repo / "data")
    with throwaway_redis() as endpoint:
        assert feast_apply(repo, endpoint).returncode == 0
        env = dict(os.environ, **{REDIS_ENV: endpoint.feast})
        feast_cli = Path(sys.executable).with_name("feast")
        r = subprocess.run([str(feast_cli), "materialize-incremental", "2026-11-01T00:00:00"], cwd=repo, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert endpoint.client().dbsize() > 500
        # the yaml's engine ran (it prints its summary per view), not Feast's fallback
        assert "customer_activity:" in r.stderr and "keys written" in r.stderr and "using Feast's local engine" not in r.stderr
        # this Redis held nothing, so each view's whole TTL window was loaded, whatever the registry says
        assert "no watermark" in r.stderr
        marks = watermark.read_all(endpoint.client(), "skewless")
        assert {v: m.end.isoformat() for v, m in marks.items()} == dict.fromkeys(["customer_profile", "customer_activity", "account_state", "churn_scores"], "2026-11-01T00:00:00+00:00")

        # the on-demand views from the stock CLI, `as_of` as text or Unix seconds, as the SDK computes them from a datetime
        import json
        from datetime import datetime, timezone

        import pandas as pd

        cid = int(pd.read_parquet(repo / "data" / "customer_profiles.parquet")["customer_id"].iloc[0])
        refs = ["customer_derived:tenure_days", "account_live:seats_now", "account_live:payment_failures_24h"]
        at = datetime(2026, 10, 31, 12, tzinfo=timezone.utc)
        monkeypatch.setenv(REDIS_ENV, endpoint.feast)  # for the SDK in this process
        want = open_store(repo).get_online_features(features=refs, entity_rows=[{"customer_id": cid, "as_of": at}]).to_dict()
        assert want["tenure_days"][0] is not None
        for as_of in ("2026-10-31T12:00:00", str(int(at.timestamp()))):
            args = [a for ref in refs for a in ("-f", ref)] + ["-e", f"customer_id={cid}", "-e", f"as_of={as_of}"]
            r = subprocess.run([str(feast_cli), "get-online-features", *args], cwd=repo, env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-3000:]
            assert json.loads(r.stdout[r.stdout.index("{"):]) == want


def test_stock_cli_without_the_redis_setting_says_what_to_set(tmp_path, small_repo):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = copy_repo(tmp_path / "feature_repo")
    shutil.rmtree(repo / "data")
    shutil.copytree(small_repo / "data", repo / "data")
    env = {k: v for k, v in os.environ.items() if k not in ("SKEWLESS_REDIS", "REDIS_URL")}
    feast_cli = Path(sys.executable).with_name("feast")
    r = subprocess.run([str(feast_cli), "materialize-incremental", "2026-11-01T00:00:00"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: the Redis online store has no address") and "SKEWLESS_REDIS" in r.stderr


def test_stock_cli_reads_the_registry_from_anywhere(tmp_path, redis_endpoint, small_repo):
    """The stock CLI's read commands on the applied repo, from another directory; `registry-dump`
    included (Feast 0.67 raises KeyError on python-mode on-demand views there: feast_plugins/registry_store.py)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from skewless.store import REDIS_ENV

    feast_cli = Path(sys.executable).with_name("feast")
    env = dict(os.environ, **{REDIS_ENV: redis_endpoint.feast})

    def run(*args):
        r = subprocess.run([str(feast_cli), "-c", str(small_repo), *args], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
        return r.stdout

    dump = json.loads(run("registry-dump"))
    python_views = {v["spec"]["name"]: v["spec"]["mode"] for v in dump["onDemandFeatureViews"]}
    assert python_views == {"account_live": "python", "customer_derived": "python"}
    assert {s["spec"]["name"] for s in dump["featureServices"]} == {"churn_v1", "churn_v2"}
    assert "customer_derived" in run("on-demand-feature-views", "list") and "churn_v2" in run("feature-services", "list")
    assert "account_state" in run("feature-views", "list") and "customer" in run("entities", "list")
