"""Production serving: API keys, the body limit whatever the framing, capped error echoes,
every answer declared in the OpenAPI schema. Real Redis, the real app; one test runs the real
`skewless serve` (uvicorn) to send a chunked body over a socket."""

from __future__ import annotations

import hmac
import os
import socket

from click.testing import CliRunner
from fastapi.testclient import TestClient
from test_online import make_settings
from test_operations import _serve, _wait

from feast_plugins.redis_server import free_port
from online import auth
from online.app import create_app
from skewless.cli import main

KEY, OTHER = "sk_first-key", "sk_second-key"


def app_client(live, tmp_path, **settings):
    s = make_settings(live, tmp_path).model_copy(update=settings)
    return TestClient(create_app(s))


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# --- API keys ------------------------------------------------------------------------------


def test_keys_guard_predict_and_scores_not_health_or_ready(live, known, tmp_path):  # noqa: F811
    with app_client(live, tmp_path, api_keys=f"{KEY},{OTHER}") as c:
        body = {"customer_id": known["fresh"]}
        for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {KEY}"}):
            r = c.post("/predict", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
            assert KEY not in r.text
        assert c.post("/predict", json=body, headers=bearer(KEY)).status_code == 200
        assert c.post("/predict", json=body, headers=bearer(OTHER)).status_code == 200  # several keys at once
        assert c.post("/predict/batch", json={"customer_ids": [known["fresh"]]}).status_code == 401
        assert c.get(f"/scores/{known['fresh']}").status_code == 401
        assert c.post("/scores/batch", json={"customer_ids": [1]}).status_code == 401
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code in (200, 503)  # never 401
        assert c.get("/metrics").status_code == 200  # open unless asked
    with app_client(live, tmp_path, api_keys=KEY, metrics_need_key=True) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=bearer(KEY)).status_code == 200


def test_keys_rotate_through_the_file_without_a_restart(live, known, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(auth, "RECHECK_S", 0.0)
    keys = tmp_path / "keys"
    r = CliRunner().invoke(main, ["api-key", "--file", str(keys), "--note", "old"])
    assert r.exit_code == 0, r.output
    old = r.stdout.strip().splitlines()[0]
    with app_client(live, tmp_path, api_keys_file=keys) as c:
        body = {"customer_id": known["fresh"]}
        assert c.post("/predict", json=body, headers=bearer(old)).status_code == 200
        new = CliRunner().invoke(main, ["api-key", "--file", str(keys), "--note", "new"]).stdout.strip().splitlines()[0]
        assert c.post("/predict", json=body, headers=bearer(new)).status_code == 200  # both work during the move
        assert c.post("/predict", json=body, headers=bearer(old)).status_code == 200
        text = keys.read_text()
        assert old not in text and new not in text  # digests only on disk
        keys.write_text("\n".join(line for line in text.splitlines() if "# old" not in line) + "\n")
        os.utime(keys, ns=(os.stat(keys).st_atime_ns, os.stat(keys).st_mtime_ns + 10**9))
        assert c.post("/predict", json=body, headers=bearer(old)).status_code == 401  # old removed
        assert c.post("/predict", json=body, headers=bearer(new)).status_code == 200


def test_every_stored_digest_is_compared(monkeypatch):
    """Constant time: a match on the first digest still compares all of them."""
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    keys = auth.ApiKeys("a,b,c,d")
    assert keys.allows("a") and len(calls) == 4
    calls.clear()
    assert not keys.allows("zzz") and len(calls) == 4


def test_bad_key_file_and_open_bind_are_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "keys"
    bad.write_text("sk_a-key-pasted-by-mistake\n")
    monkeypatch.setenv("SKEWLESS_API_KEYS_FILE", str(bad))
    r = CliRunner().invoke(main, ["serve", "--host", "127.0.0.1"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "line 1" in r.output
    assert "pasted-by-mistake" not in r.output
    monkeypatch.delenv("SKEWLESS_API_KEYS_FILE")
    monkeypatch.delenv("SKEWLESS_API_KEYS", raising=False)
    r = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "SKEWLESS_API_KEYS" in r.output and "--allow-open" in r.output


def test_a_port_it_cannot_listen_on_is_one_line_before_anything_starts():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(main, ["serve", "--port", str(port)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"127.0.0.1:{port}" in r.output and "--port" in r.output and "redis" not in r.output.lower()
    r = CliRunner().invoke(main, ["serve", "--port", "99999"])
    assert r.exit_code == 2 and "0<=x<=65535" in r.output


def test_a_missing_bundle_or_a_bad_budget_is_one_line_before_any_worker_starts(tmp_path, monkeypatch):
    # as settings (`serve` would put its --model-dir and --model options into this process's environment)
    monkeypatch.setenv("SKEWLESS_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SKEWLESS_MODEL_VERSION", "v9")
    r = CliRunner().invoke(main, ["serve"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "no model version 'v9'" in r.output, r.output
    monkeypatch.setenv("SKEWLESS_FEATURE_MAX_LAG", "customer_activity=soon")
    r = CliRunner().invoke(main, ["serve"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "SKEWLESS_FEATURE_MAX_LAG" in r.output and "'soon' is not a duration" in r.output


# --- the API's edges -----------------------------------------------------------------------


def test_a_422_echoes_a_capped_input(live, tmp_path):
    with app_client(live, tmp_path) as c:
        r = c.post("/predict/batch", json={"customer_ids": list(range(1001))})
        assert r.status_code == 422
        assert len(r.content) < 2_000, len(r.content)
        echoed = r.json()["detail"][0]["input"]
        assert len(echoed) == 11 and echoed[-1] == "... (1,001 items)"
        r = c.post("/predict", json={"customer_id": "x" * 100_000})
        assert r.status_code == 422 and len(r.content) < 2_000


def test_a_chunked_body_over_the_limit_is_413(live, tmp_path):
    with app_client(live, tmp_path, max_body_bytes=1024) as c:
        big = (b'{"customer_ids": [' + b"1," * 5_000 + b"1]}")
        r = c.post("/predict/batch", content=iter([big[i:i + 500] for i in range(0, len(big), 500)]),
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413, r.text
        small = b'{"customer_id": 1}'
        r = c.post("/predict", content=iter([small[:5], small[5:]]), headers={"Content-Type": "application/json"})
        assert r.status_code in (200, 404), r.text  # read whole, then answered


def test_every_status_is_declared(live, tmp_path):
    with app_client(live, tmp_path) as c:
        spec = c.get("/openapi.json").json()
        for path, method in (("/predict", "post"), ("/predict/batch", "post"), ("/scores/{customer_id}", "get"), ("/scores/batch", "post")):
            declared = set(spec["paths"][path][method]["responses"])
            assert {"200", "400", "401", "413", "422", "503"} <= declared, (path, declared)
        assert "404" in spec["paths"]["/predict"]["post"]["responses"]
        assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
        r = c.post("/predict", content=b'{"customer_id": "\xff\xfe"}', headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422) and "detail" in r.json()
        # a wrong method names the route's own method (found by schemathesis: /scores/batch said GET)
        for path, allowed in (("/predict", "POST"), ("/predict/batch", "POST"), ("/scores/batch", "POST"), ("/scores/42", "GET")):
            r = c.request("PUT", path)
            assert r.status_code == 405 and r.headers["allow"] == allowed, (path, r.headers.get("allow"))


def test_real_server_refuses_a_20mb_chunked_body_and_needs_a_key(live, tmp_path):
    port = free_port()
    proc = _serve(live, {"SKEWLESS_API_KEYS": KEY}, port, tmp_path)
    try:
        _wait(f"http://127.0.0.1:{port}/health", 200, proc)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(f"POST /predict/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b"1," * 32_768
            answer = b""
            try:
                for _ in range(20 * 2**20 // len(chunk)):
                    s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:
                pass  # the server answered and closed while we were still sending
            s.settimeout(10)
            try:
                while b"\r\n\r\n" not in answer:
                    part = s.recv(65536)
                    if not part:
                        break
                    answer += part
            except OSError:
                pass
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        import httpx

        r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"customer_id": 1})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
