"""functions/recommender/main.py: in-process (ASGI) for the 4xx cases, and the real
functions-framework server in a subprocess for the end-to-end path."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import functions_framework
import httpx
import pytest
from bff_fakes import Fakes, closed_port
from zerorec.api import MAX_BODY_BYTES, openapi_json
from zerorec.runner import command as runner_command

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "functions" / "recommender" / "main.py"


@pytest.fixture(scope="module")
def app() -> Any:
    return functions_framework.create_app(target="recommender", source=str(SOURCE))


def post(app: Any, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.request(kw.pop("method", "POST"), path, **kw)

    return asyncio.run(go())


def test_aio_function_is_served_as_asgi(app: Any) -> None:
    from starlette.applications import Starlette

    assert isinstance(app, Starlette)


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"user_id": "u1", "n": 5, "foo": 1}, 422, "foo: Extra inputs are not permitted"),
        ({"user_id": "u1", "n": 0}, 422, "n: Input should be greater than or equal to 1"),
        ({"user_id": "u1", "n": 101}, 422, "n: Input should be less than or equal to 100"),
        ({"user_id": "u1", "n": "5"}, 422, "n: Input should be a valid integer"),
        ({"user_id": 7}, 422, "user_id: Input should be a valid string"),
        ({"n": 5}, 422, "give user_id, or recent_items for a guest"),
        ({"user_id": "u1", "recent_items": ["i1"]}, 422, "recent_items is for guests"),
        ({"user_id": "x" * 129}, 422, "user_id: String should have at most 128 characters"),
        ({"user_id": "u1", "exclude": ["a"] * 1001}, 422, "exclude: List should have at most 1000 items"),
        ({"user_id": "u1", "context": {"k": [1]}}, 422, "context.k: wrong type"),
        ([1, 2], 422, "body: Input should be an object"),
    ],
)
def test_bad_requests_get_4xx_with_reason(app: Any, body: Any, status: int, reason: str) -> None:
    r = post(app, "/recommend", content=json.dumps(body))
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert reason in r.json()["error"]


def test_not_json_is_400(app: Any) -> None:
    r = post(app, "/recommend", content=b"user_id=u1")
    assert r.status_code == 400 and "Invalid JSON" in r.json()["error"]


def test_oversized_body_is_413(app: Any) -> None:
    body = json.dumps({"user_id": "u1", "exclude": ["x" * 100] * 700}).encode()
    assert len(body) > MAX_BODY_BYTES
    r = post(app, "/recommend", content=body)
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_routes(app: Any) -> None:
    assert post(app, "/recommend", method="GET").status_code == 405
    assert post(app, "/nope", content=b"{}").status_code == 404
    health = post(app, "/health", method="GET")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    spec = post(app, "/openapi.json", method="GET")
    assert spec.status_code == 200 and "/recommend" in spec.json()["paths"]


def test_openapi_file_is_current() -> None:
    committed = (REPO / "functions" / "recommender" / "openapi.json").read_text()
    assert committed == openapi_json(), (
        "functions/recommender/openapi.json is stale: run "
        ".venv/bin/python -m zerorec.api functions/recommender/openapi.json"
    )


# --------------------------------------------------------------------------- real server


@pytest.fixture
def ff_server(fakes: Fakes, tmp_path: Path) -> Iterator[str]:
    port = closed_port()
    env = dict(os.environ)
    env.update({f"ZEROREC_{s.upper()}_URL": url for s, url in fakes.urls.items()})
    env.update({"ZEROREC_DEADLINE_MS": "2000", "ZEROREC_TOTAL_BUDGET_MS": "5000"})  # not a deadline test
    env["ZEROREC_RECALL_CANDIDATES"] = "50"
    log = (tmp_path / "ff.log").open("wb")
    proc = subprocess.Popen(
        runner_command("recommender", SOURCE, "127.0.0.1", port),
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = (tmp_path / "ff.log").read_text(errors="replace")
                pytest.fail(f"the recommender function did not start: {out[-2000:]}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_functions_framework_server_end_to_end(ff_server: str, fakes: Fakes) -> None:
    r = httpx.post(ff_server + "/recommend", json={"user_id": "u1", "n": 3}, timeout=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["item_id"] for i in body["items"]] == ["i29", "i28", "i27"]
    assert body["degraded"] == [] and body["source"] == "personalized"
    assert body["items"][0]["metadata"]["title"] == "Title i29"

    fakes.mode["ranking"] = "http_500"
    r = httpx.post(ff_server + "/recommend", json={"user_id": "u1", "n": 3}, timeout=5)
    assert r.status_code == 200
    assert r.json()["degraded"] == ["ranking_http_500"]
    assert [i["item_id"] for i in r.json()["items"]] == ["i0", "i2", "i3"]

    bad = httpx.post(ff_server + "/recommend", json={"user_id": "u1", "n": 500}, timeout=5)
    assert bad.status_code == 422 and "n:" in bad.json()["error"]

    def chunks() -> Iterator[bytes]:  # chunked, no content-length: the limit still holds
        yield b'{"user_id": "u1", "exclude": ['
        for _ in range(2000):
            yield b'"' + b"x" * 60 + b'",'
        yield b'"y"]}'

    big = httpx.post(ff_server + "/recommend", content=chunks(), timeout=5)
    assert big.status_code == 413
