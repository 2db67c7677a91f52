"""Redis as deployed: a password, an ACL user and TLS with client certificates, on a real
`redis-server` started by the test with certificates the test makes (openssl). Materialization,
the service and /predict must equal the password-less setup; wrong credentials fail with one
line that carries no secret."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from test_operations import dump, sample, store_on  # noqa: F401  (fixture)

from feast_plugins.materialize import materialize
from feast_plugins.redis_server import RedisEndpoint, free_port, throwaway_redis
from online.app import create_app
from online.settings import Settings
from skewless.cli import main
from skewless.store import REDIS_ENV

PASSWORD = "s3cret-Pw_for-tests"
USER, USER_PASSWORD = "skewless", "acl-Pw_for-tests"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def certificates(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=skewless-test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
                "-extfile", "ext", "-out", f"{name}.crt", cwd=d)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """redis-server with `requirepass`, an ACL user and TLS only (no plain port), client certs required."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make the test certificates")
    d = tmp_path_factory.mktemp("tls")
    certificates(d)
    port = free_port()
    (d / "redis.conf").write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {d}\n"
        f"tls-cert-file {d}/server.crt\ntls-key-file {d}/server.key\ntls-ca-cert-file {d}/ca.crt\ntls-auth-clients yes\n"
        f"requirepass {PASSWORD}\nuser {USER} on >{USER_PASSWORD} ~* &* +@all\n")
    proc = subprocess.Popen(["redis-server", str(d / "redis.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    files = f"ssl_ca_certs={d}/ca.crt&ssl_certfile={d}/client.crt&ssl_keyfile={d}/client.key"
    try:
        endpoint = RedisEndpoint.from_url(f"rediss://{USER}:{USER_PASSWORD}@127.0.0.1:{port}/0?{files}")
        deadline = time.monotonic() + 10
        while not endpoint.ping():
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server with TLS did not start"
            time.sleep(0.05)
        yield {"user": endpoint, "url": endpoint.url, "default_url": f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?{files}",
               "wrong_url": f"rediss://{USER}:wrong-{USER_PASSWORD}@127.0.0.1:{port}/0?{files}", "port": port}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_both_spellings_say_the_same_endpoint(secured):
    e = secured["user"]
    assert RedisEndpoint.from_feast(e.feast) == e and RedisEndpoint.from_url(e.url) == e
    assert e.tls and e.username == USER and USER_PASSWORD not in repr(e) and USER_PASSWORD not in e.where


def test_password_acl_and_tls_serve_what_the_plain_setup_serves(live, sample, secured, monkeypatch):  # noqa: F811
    now = datetime.now(timezone.utc)
    with throwaway_redis() as plain:
        materialize(store_on(live.repo, plain, monkeypatch), now)
        monkeypatch.setenv("REDIS_URL", secured["url"])  # what a deployment sets: the CLI reads it
        r = CliRunner().invoke(main, ["materialize", "--repo", str(live.repo), "--end", now.isoformat()])
        assert r.exit_code == 0, r.output
        assert USER_PASSWORD not in r.output and "(tls)" in r.output
        assert dump(secured["user"]) == dump(plain)  # the same keys, bytes and watermarks

        answers = {}
        for name, endpoint in (("plain", plain), ("secured", secured["user"])):
            monkeypatch.delenv("REDIS_URL", raising=False)
            monkeypatch.setenv(REDIS_ENV, endpoint.feast)
            with TestClient(create_app(Settings(repo_path=live.repo, model_dir=live.model_dir, feature_log=False))) as c:
                ready = c.get("/ready")
                assert ready.status_code == 200, ready.text
                assert USER_PASSWORD not in ready.text and PASSWORD not in ready.text
                answers[name] = c.post("/predict/batch", json={"customer_ids": sample}).json()["predictions"]
        strip = [[{k: v for k, v in p.items() if k != "features_as_of"} for p in a] for a in answers.values()]
        assert strip[0] == strip[1] and sum(p["status"] == "ok" for p in answers["plain"]) > 40

    # the default user with requirepass works too
    monkeypatch.setenv("REDIS_URL", secured["default_url"])
    assert RedisEndpoint.from_url(secured["default_url"]).ping()


@pytest.mark.parametrize("command", [["materialize"], ["serve", "--port", "0"]])
def test_wrong_credentials_fail_with_one_line_and_no_secret(live, secured, monkeypatch, command):
    monkeypatch.setenv("REDIS_URL", secured["wrong_url"])
    # what `serve --repo` would put into this process's environment, set (and undone) here; a bundle to serve
    monkeypatch.setenv("SKEWLESS_REPO_PATH", str(live.repo))
    monkeypatch.setenv("SKEWLESS_MODEL_DIR", str(live.model_dir))
    r = CliRunner().invoke(main, [*command, "--repo", str(live.repo)])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "credentials" in lines[0], r.output
    assert USER_PASSWORD not in r.output and "wrong-" not in r.output and PASSWORD not in r.output


@pytest.mark.parametrize("url, expected", [
    ("127.0.0.1:6379", "REDIS_URL must look like redis://"), ("http://127.0.0.1:6379/0", "got scheme 'http'"),
    ("redis://127.0.0.1:99999/0", "the port (1..65535) and the db must be numbers"), ("redis://127.0.0.1:{port}/99", "has no db 99"),
])
def test_a_misspelled_redis_url_fails_with_one_line(live, redis_endpoint, monkeypatch, url, expected):
    monkeypatch.setenv("REDIS_URL", url.format(port=redis_endpoint.port))
    r = CliRunner().invoke(main, ["materialize", "--repo", str(live.repo)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and expected in r.output, r.output
