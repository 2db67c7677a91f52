"""Model rollout without downtime: `latest` moves, the worker swaps the verified bundle in
between requests; a bundle that fails verification is refused and the old one keeps serving."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient
from test_online import make_settings

from online.app import create_app
from skewless.bundle import point_latest


def copy_bundle(root: Path, source: str, version: str) -> Path:
    """The same model under another version (what a retrain on the same data gives, near enough)."""
    dest = root / version
    shutil.copytree(root / source, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    (dest / "manifest.json").write_text(json.dumps(manifest | {"version": version}, indent=2))
    return dest


def wait_for(predicate, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_latest_moves_and_the_new_bundle_is_swapped_in_without_a_restart(live, known, tmp_path):  # noqa: F811
    models = tmp_path / "models"
    shutil.copytree(live.model_dir, models, symlinks=True)
    root = models / "churn"
    v1 = live.bundle.version
    settings = make_settings(live, tmp_path).model_copy(update={"model_dir": models, "model_poll_s": 0.1})
    body = {"customer_ids": [known["fresh"]] * 50}
    with TestClient(create_app(settings)) as c:
        first = c.post("/predict/batch", json=body).json()["predictions"]
        assert {p["model_version"] for p in first} == {v1}

        # requests keep flowing while latest moves: every answer is whole, from one version
        seen, errors, stop = [], [], threading.Event()

        def traffic():
            while not stop.is_set():
                r = c.post("/predict/batch", json=body)
                if r.status_code != 200:
                    errors.append(r.status_code)
                else:
                    seen.append({p["model_version"] for p in r.json()["predictions"]})

        t = threading.Thread(target=traffic)
        t.start()
        v2 = "29990101T000000Z-rollout2"
        copy_bundle(root, v1, v2)
        point_latest(root, v2)
        wait_for(lambda: c.post("/predict", json={"customer_id": known["fresh"]}).json()["model_version"] == v2)
        after = c.post("/predict/batch", json=body).json()["predictions"]
        assert [p["churn_probability"] for p in after] == [p["churn_probability"] for p in first]  # same model, new name
        assert c.get("/ready").json().get("rollout") is None

        # then a bundle whose model file changed after training, traffic still flowing: refused,
        # v2 keeps serving, /ready and a metric say so
        v3 = "29990101T000000Z-broken3"
        broken = copy_bundle(root, v1, v3)
        with open(broken / "model.ubj", "ab") as f:
            f.write(b"tampered")
        point_latest(root, v3)
        ready = wait_for(lambda: (r := c.get("/ready")).json().get("rollout") and r)
        time.sleep(0.5)
        stop.set()
        t.join()
        assert not errors, errors  # no downtime
        assert len(seen) > 10 and all(len(versions) == 1 for versions in seen)  # a request is scored by one version
        assert set().union(*seen) == {v1, v2}
        assert ready.status_code == 200 and v3 in ready.json()["rollout"] and "checksum" in ready.json()["rollout"]
        assert ready.json()["model"].endswith(v2)
        assert c.post("/predict", json={"customer_id": known["fresh"]}).json()["model_version"] == v2
        assert "skewless_model_rollouts_refused_total 1.0" in c.get("/metrics").text


def test_a_bundle_whose_contract_differs_from_the_served_one_is_refused(live, known, tmp_path):
    """At a rollout the contract is checked against the one the service read at start-up, which
    is what its feature lookup supplies: a manifest that names another dtype is refused."""
    models = tmp_path / "models"
    shutil.copytree(live.model_dir, models, symlinks=True)
    root = models / "churn"
    settings = make_settings(live, tmp_path).model_copy(update={"model_dir": models, "model_poll_s": 0.1})
    with TestClient(create_app(settings)) as c:
        v4 = "29990101T000000Z-othertypes4"
        dest = copy_bundle(root, live.bundle.version, v4)
        manifest = json.loads((dest / "manifest.json").read_text())
        numeric = next(f for f in manifest["features"] if f["dtype"] == "Int64")
        numeric["dtype"] = "Float32"
        (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
        point_latest(root, v4)
        ready = wait_for(lambda: (r := c.get("/ready")).json().get("rollout") and r)
        assert "registry's differs" in ready.json()["rollout"] and numeric["name"] in ready.json()["rollout"]
        assert c.post("/predict", json={"customer_id": known["fresh"]}).json()["model_version"] == live.bundle.version
