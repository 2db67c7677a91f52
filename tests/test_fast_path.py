"""The fast path of POST /predict and /predict/batch (online/middleware.py): plain requests are answered before FastAPI's
routing with exactly the route's answers; every other request reaches the route with its body
whole. Real Redis, the real app with the fast path on and off."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from test_online import make_settings

from online.app import create_app
from online.middleware import PredictFastPath

KEY = "sk_fast-path-key"
JSON = {"content-type": "application/json"}


def both(live, tmp_path, **settings):
    """The same app twice: the fast path on, then off."""
    base = make_settings(live, tmp_path)
    return (TestClient(create_app(base.model_copy(update={**settings, "predict_fast_path": True}))),
            TestClient(create_app(base.model_copy(update={**settings, "predict_fast_path": False}))))


def answer(r) -> tuple:
    """What a client sees, less the request time (features_as_of is each request's own now)."""
    body = r.json()
    for p in body.get("predictions", [body]) if isinstance(body, dict) else []:
        p.pop("features_as_of", None)
    return r.status_code, r.headers.get("content-type"), r.headers.get("www-authenticate"), r.headers.get("retry-after"), body


def requests_to_compare(known) -> list[tuple[str, dict]]:
    fresh, expired, unknown = known["fresh"], known["expired"], known["unknown"]
    plain = [
        ("/predict", {"json": {"customer_id": fresh}}),
        ("/predict?include_features=true", {"json": {"customer_id": fresh}}),
        ("/predict?include_features=false", {"json": {"customer_id": fresh}}),
        ("/predict?include_features=true", {"json": {"customer_id": expired}}),
        ("/predict", {"json": {"customer_id": unknown}}),  # 404
        ("/predict", {"content": b'{ "customer_id" : %d }' % fresh, "headers": JSON}),
    ]
    handed_on = [
        ("/predict?include_features=1", {"json": {"customer_id": fresh}}),
        ("/predict?include_features=maybe", {"json": {"customer_id": fresh}}),
        ("/predict?other=1", {"json": {"customer_id": fresh}}),
        ("/predict", {"json": {"customer_id": True}}),
        ("/predict", {"json": {"customer_id": "42"}}),
        ("/predict", {"json": {"customer_id": -1}}),
        ("/predict", {"json": {"customer_id": 2**63}}),
        ("/predict", {"json": {"customer_id": fresh, "x": 1}}),
        ("/predict", {"json": {"customer_ids": [fresh]}}),
        ("/predict", {"json": [fresh]}),
        ("/predict", {"content": b'{"customer_id": 1.0}', "headers": JSON}),
        ("/predict", {"content": b'{"customer_id": NaN}', "headers": JSON}),
        ("/predict", {"content": b"{not json", "headers": JSON}),
        ("/predict", {"content": b"", "headers": JSON}),
        ("/predict", {"content": b'{"customer_id": %d}' % fresh, "headers": {"content-type": "text/plain"}}),
        ("/predict", {"content": b'{"customer_id": %d}' % fresh, "headers": {"content-type": "application/json; charset=utf-8"}}),
    ]
    batch = "/predict/batch"
    plain += [
        (batch, {"json": {"customer_ids": [fresh, unknown, expired, fresh]}}),
        (batch + "?include_features=true", {"json": {"customer_ids": [expired, fresh]}}),
        (batch, {"json": {"customer_ids": [unknown]}}),
        (batch, {"json": {"customer_ids": [fresh] * 1000}}),
    ]
    handed_on += [
        (batch, {"json": {"customer_ids": [fresh] * 1001}}),
        (batch, {"json": {"customer_ids": []}}),
        (batch, {"json": {"customer_ids": [fresh, "1"]}}),
        (batch, {"json": {"customer_ids": [fresh, True]}}),
        (batch, {"json": {"customer_ids": [fresh, -1]}}),
        (batch, {"json": {"customer_ids": [[fresh]]}}),
        (batch, {"json": {"customer_ids": fresh}}),
        (batch, {"json": {"customer_ids": [fresh], "x": 1}}),
        (batch, {"json": {"customer_id": fresh}}),
        (batch + "?include_features=yes", {"json": {"customer_ids": [fresh]}}),
    ]
    return plain + handed_on


def test_every_request_gets_the_routes_answer(live, known, tmp_path):
    on, off = both(live, tmp_path)
    with on, off:
        for path, kw in requests_to_compare(known):
            assert answer(on.post(path, **kw)) == answer(off.post(path, **kw)), (path, kw)


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"bearer {KEY}"},
                                     {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer"}])
def test_the_api_key_is_checked_as_the_route_checks_it(live, known, tmp_path, headers):
    on, off = both(live, tmp_path, api_keys=KEY)
    with on, off:
        for path, kw in requests_to_compare(known)[:5] + requests_to_compare(known)[6:8]:
            kw = {**kw, "headers": {**kw.get("headers", {}), **headers}}
            assert answer(on.post(path, **kw)) == answer(off.post(path, **kw)), (path, kw)


def test_plain_requests_are_answered_before_the_router_and_the_rest_reach_it_whole(live, known, tmp_path):
    """Called as ASGI with a stand-in for what follows it: which requests reach it, with which body."""
    reached: list[bytes] = []

    async def router(scope, receive, send):
        parts, more = [], True
        while more:
            message = await receive()
            parts.append(message["body"])
            more = message["more_body"]
        reached.append(b"".join(parts))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def post(app, query: bytes, body: bytes, path: str = "/predict") -> int:
        sent = []
        scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "query_string": query, "app": app,
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        chunks = [body[:5], body[5:]]  # sent in two parts: the fast path reads them all

        async def receive():
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

        async def send(message):
            sent.append(message)

        await PredictFastPath(router)(scope, receive, send)
        return sent[0]["status"]

    with TestClient(create_app(make_settings(live, tmp_path))) as client:  # starts the service
        app = client.app
        fresh = json.dumps({"customer_id": known["fresh"]}).encode()
        assert asyncio.run(post(app, b"", fresh)) == 200
        assert asyncio.run(post(app, b"", json.dumps({"customer_id": known["unknown"]}).encode())) == 404
        batch = json.dumps({"customer_ids": [known["fresh"], known["unknown"]]}).encode()
        assert asyncio.run(post(app, b"include_features=true", batch, "/predict/batch")) == 200
        assert reached == []
        odd = b'{"customer_id": "%d"}' % known["fresh"]
        assert asyncio.run(post(app, b"", odd)) == 299
        assert asyncio.run(post(app, b"include_features=yes", fresh)) == 299
        assert asyncio.run(post(app, b"", batch[:-1], "/predict/batch")) == 299  # malformed: the route's 422
        assert reached == [odd, fresh, batch[:-1]]


def test_prediction_rows_are_written_as_the_models_would_be(live, known, tmp_path):
    """Service.predict returns plain rows (online/schemas.py:PredictionRow) that online/responses.py
    writes without building the Prediction models: the bytes must be the models' own
    model_dump_json(exclude_none=True), for every kind of answer the service gives and for the
    values a row may hold (NaN and None as null, big IDs, bools, strings to escape)."""
    from online.responses import RowsJSON, batch_answer, prediction_answer
    from online.schemas import BatchResponse, Prediction

    def as_models(rows) -> bytes:
        return BatchResponse.model_validate({"predictions": rows}).model_dump_json(exclude_none=True).encode()

    with TestClient(create_app(make_settings(live, tmp_path))) as client:
        service = client.app.state.service
        ids = [known["fresh"], known["expired"], known["unknown"], known["fresh"]]
        for flags, explain in ((False, 0), (True, 0), ([True, False, True, False], 0), (False, 3)):
            rows = service.predict(ids, flags, explain)
            assert [r["status"] for r in rows] == ["ok", "ok", "not_found", "ok"]
            assert batch_answer(rows).body == as_models(rows)
            for row in rows:
                assert RowsJSON(row).body == Prediction.model_validate(row).model_dump_json(exclude_none=True).encode()
        assert prediction_answer(rows[0]).body == RowsJSON(rows[0]).body
        assert prediction_answer(rows[2]).status_code == 404
    odd = [{"customer_id": 2**63 - 1, "status": "ok", "churn_probability": float("nan"), "churn_prediction": 0,
            "risk_segment": 'Lo"w\u00e9\n', "model_name": "m", "model_version": "v", "features_as_of": "t",
            "features": {"a": None, "b": True, "c": 3, "d": 0.1, "e": "x\\y", "f": 1e-7, "g": 1e300}}]
    assert batch_answer(odd).body == as_models(odd)
