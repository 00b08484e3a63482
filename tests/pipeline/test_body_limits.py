"""Body limits on every endpoint that is not a serving route: consumer (one event, a batch), the task
functions (zerorec.task_function), flink-realtime control and behavior. Over the limit is a 413 with
a reason, and the body is never read past the limit: a streamed (chunked) body stops being pulled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import functions_framework
import httpx
import orjson
import pytest
from pipeline_helpers import REPO, call, click
from zerorec.cloudevents_io import BATCH, MAX_BODY_BYTES, new_event, to_http_binary, to_http_structured

CHUNK = 16 * 1024


def streamed(app: Any, path: str, headers: dict[str, str], total: int) -> tuple[httpx.Response, int]:
    """POST `total` bytes in CHUNK pieces with no Content-Length (chunked); the response and how
    many bytes the app pulled before answering."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        while pulled < total:
            pulled += CHUNK
            yield b" " * CHUNK

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post(path, headers=headers, content=body())

    return asyncio.run(go()), pulled


def assert_refused_unread(app: Any, path: str, headers: dict[str, str], limit: int) -> None:
    r, pulled = streamed(app, path, headers, 64 * limit)
    assert r.status_code == 413 and f"larger than {limit} bytes" in r.json()["error"], r.text
    assert pulled <= limit + 2 * CHUNK, f"pulled {pulled} bytes of a body over the {limit}-byte limit"
    declared = {**headers, "content-length": str(limit + 1)}
    r = call(app, "POST", path, headers=declared, content=b" " * (limit + 1))
    assert r.status_code == 413, "a declared length over the limit is refused as well"


def test_consumer_one_event(make_app: Any) -> None:
    app = make_app("consumer")
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/t", "ce-type": "dev.zerorec.behavior.v1"}
    assert_refused_unread(app, "/", headers, MAX_BODY_BYTES)


def test_consumer_batch(make_app: Any, namespace: str) -> None:
    app = make_app("consumer", ZEROREC_CONSUMER_MAX_BATCH_BYTES="8192")
    assert_refused_unread(app, "/", {"content-type": BATCH}, 8192)
    events = [new_event("dev.zerorec.behavior.v1", click(namespace), source="/t") for _ in range(3)]
    body = b"[" + b",".join(to_http_structured(e)[1] for e in events) + b"]"
    assert len(body) < 8192
    r = call(app, "POST", "/", headers={"content-type": BATCH}, content=body)
    assert r.status_code == 200 and [x["status"] for x in r.json()["results"]] == [200] * 3, r.text


def test_task_functions(make_app: Any) -> None:
    """worker here; model-training, feature-engineering and vector-generation share the handler."""
    app = make_app("worker")
    headers, _ = to_http_binary(new_event("dev.zerorec.task.rebuild-hot.v1", {}, source="/t"))
    assert_refused_unread(app, "/", headers, MAX_BODY_BYTES)
    # a normal task event still runs
    headers, body = to_http_binary(new_event("dev.zerorec.task.rebuild-hot.v1", {}, source="/t"))
    assert call(app, "POST", "/", headers=headers, content=body).status_code == 200


def test_flink_control(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("ZEROREC_FLINK_PYTHON", str(tmp_path / "no-such-python"))
    source = REPO / "functions" / "flink-realtime" / "main.py"
    app = functions_framework.create_app(target="flink_realtime", source=str(source))
    assert_refused_unread(app, "/start", {"content-type": "application/json"}, 16 * 1024)
    r = call(app, "POST", "/start", content=orjson.dumps([1]))
    assert r.status_code == 400, "a small body is read and judged as before"


def test_behavior(make_app: Any) -> None:
    app = make_app("behavior", ZEROREC_BEHAVIOR_MAX_BODY_BYTES="4096")
    assert_refused_unread(app, "/events", {"content-type": "application/json"}, 4096)
