"""Hostile bodies the schema-driven fuzzing does not generate: deeply nested JSON (arrays and objects,
at the top and inside a CloudEvent's data), in every content mode each function takes.

Regression: a 5,000-deep nested array sent to behavior's `POST /events` as a structured CloudEvent
got a 500 (RecursionError in the CloudEvents SDK's json parser); it is a 400 with a reason now.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from test_http_fuzz import invariant_violation
from zerorec.openapi_docs import PUBLISHED

DEPTHS = (200, 300, 1000, 5000)
BEHAVIOR = "dev.zerorec.behavior.v1"


def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def envelope(data: bytes, event_type: str = BEHAVIOR) -> bytes:
    head = f'{{"specversion":"1.0","id":"x1","source":"/fuzz","type":"{event_type}","data":'
    return head.encode() + data + b"}"


def binary(event_type: str = BEHAVIOR) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": "x1",
        "ce-source": "/fuzz",
        "ce-type": event_type,
        "content-type": "application/json",
    }


STRUCTURED = {"content-type": "application/cloudevents+json"}
JSON = {"content-type": "application/json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}

# (function, path, headers, body builder of a nested document)
TARGETS: list[tuple[str, str, dict[str, str], Any]] = [
    ("behavior", "/events", JSON, lambda doc: doc),
    ("behavior", "/events", STRUCTURED, lambda doc: doc),
    ("behavior", "/events", STRUCTURED, envelope),
    ("behavior", "/events", binary(), lambda doc: doc),
    ("consumer", "/", STRUCTURED, lambda doc: doc),
    ("consumer", "/", STRUCTURED, envelope),
    ("consumer", "/", binary(), lambda doc: doc),
    ("consumer", "/", BATCH, lambda doc: doc),
    ("consumer", "/", BATCH, lambda doc: b"[" + envelope(doc) + b"]"),
    ("consumer", "/", STRUCTURED, lambda doc: envelope(doc, "dev.zerorec.item.upserted.v1")),
    ("worker", "/", STRUCTURED, lambda doc: envelope(doc, "dev.zerorec.task.rebuild-hot.v1")),
    ("worker", "/", binary("dev.zerorec.task.export-events.v1"), lambda doc: doc),
    ("item", "/", JSON, lambda doc: doc),
    ("item", "/admin/items", JSON, lambda doc: b'{"upsert":[' + doc + b"]}"),
    ("item", "/events/model-published", STRUCTURED, lambda d: envelope(d, "dev.zerorec.model.published.v1")),
    ("user", "/", JSON, lambda doc: doc),
    ("recommender", "/recommend", JSON, lambda doc: b'{"user_id":"u1","context":' + doc + b"}"),
]


def post(app: Any, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post(path, headers=headers, content=body)

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("function, path, headers, build", TARGETS)
def test_deeply_nested_json_is_a_4xx_with_a_reason(
    fuzz_apps: dict[str, Any], function: str, path: str, headers: dict[str, str], build: Any, kind: str
) -> None:
    problems = []
    for depth in DEPTHS:
        response = post(fuzz_apps[function], path, headers, build(nested(depth, kind)))
        problem = invariant_violation(response.status_code, response.content)
        if problem:
            problems.append(f"depth {depth}: {problem}")
    assert not problems, problems


def request(app: Any, method: str, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path)

    return asyncio.run(go())


@pytest.mark.parametrize("function", sorted(PUBLISHED))
def test_wrong_methods_and_unknown_paths_get_a_4xx_with_a_reason(
    fuzz_apps: dict[str, Any], function: str
) -> None:
    """What schemathesis does not try: methods and paths the document does not list."""
    import json

    doc = json.loads(request(fuzz_apps[function], "GET", "/openapi.json").content)
    problems = []
    for path, operations in doc["paths"].items():
        for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - {m.upper() for m in operations}:
            response = request(fuzz_apps[function], method, path)
            problem = invariant_violation(response.status_code, response.content)
            if problem or response.status_code < 400:
                problems.append(f"{method} {path}: {problem or response.status_code}")
    response = request(fuzz_apps[function], "POST", "/no/such/path")
    if invariant_violation(response.status_code, response.content) or response.status_code < 400:
        problems.append(f"POST /no/such/path: {response.status_code} {response.content[:100]!r}")
    assert not problems, problems
