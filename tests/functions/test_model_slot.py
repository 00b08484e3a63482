"""zerorec.serving.ModelSlot: atomic swap, refusal keeps the old model, 503 until loaded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from zerorec.api import MAX_BODY_BYTES
from zerorec.cloudevents_io import PING_EVENT_TYPE, TASK_TYPE_EXTENSION, new_event, to_http_binary
from zerorec.errors import IntegrityError, NotFoundError
from zerorec.serving import EVENTS_PATH, MODEL_PUBLISHED, HTTPError, ModelSlot, dispatch, json_response


def test_swap_and_refusal() -> None:
    def loader(version: str) -> tuple[str, str]:
        if version == "bad":
            raise IntegrityError("checksum mismatch")
        if version == "boom":
            raise RuntimeError("does not build")
        return ("v1" if version == "latest" else version), f"model-{version}"

    slot = ModelSlot("m", loader)
    with pytest.raises(HTTPError) as err:
        slot.require()
    assert err.value.status == 503
    assert slot.load() and slot.version == "v1"
    held = slot.require()
    assert slot.load("v2") and slot.version == "v2" and held.value == "model-latest", "old object untouched"
    assert not slot.load("bad") and slot.version == "v2" and "IntegrityError" in (slot.last_error or "")
    assert not slot.load("boom") and slot.version == "v2" and "RuntimeError" in (slot.last_error or "")
    assert slot.load("v3") and slot.last_error is None


def test_missing_model_retries_in_background() -> None:
    calls = []

    def loader(version: str) -> tuple[str, int]:
        calls.append(version)
        if len(calls) < 2:
            raise NotFoundError("no LATEST")
        return "v1", 1

    slot = ModelSlot("m", loader, retry_s=0.01)
    assert not slot.load()

    async def go() -> None:
        for _ in range(200):
            if slot.health().status_code == 200:
                return
            await asyncio.sleep(0.02)

    asyncio.run(go())
    assert slot.version == "v1" and len(calls) == 2


def _drive(slot: ModelSlot, until: str | None = None, rounds: int = 200) -> None:
    """Call refresh_if_due as requests would, until the slot serves `until` (or `rounds` pass)."""

    async def go() -> None:
        for _ in range(rounds):
            slot.refresh_if_due()
            if slot.version == until:
                return
            await asyncio.sleep(0.02)

    asyncio.run(go())


def test_a_loaded_slot_follows_latest_it_was_not_told_about() -> None:
    """Knative delivers model.published to one pod: the others must find the new LATEST themselves."""
    latest = ["v1"]
    store_down = [False]

    def probe() -> str:
        if store_down[0]:
            raise NotFoundError("LATEST unreadable")
        return latest[0]

    def loader(version: str) -> tuple[str, str]:
        got = latest[0] if version == "latest" else version
        return got, f"model-{got}"

    slot = ModelSlot("m", loader, latest=probe, poll_s=0.01)
    assert slot.load() and slot.version == "v1"
    latest[0] = "v2"
    _drive(slot, until="v2")
    assert slot.version == "v2" and slot.require().value == "model-v2"

    store_down[0] = True  # an unreadable LATEST keeps the model that serves
    latest[0] = "v3"
    _drive(slot, rounds=10)
    assert slot.version == "v2"

    plain = ModelSlot("m", loader)  # no `latest`: never polls
    assert plain.load() and plain.version == "v3"
    latest[0] = "v4"
    _drive(plain, rounds=10)
    assert plain.version == "v3"


# ------------------------------------------------------------- the request path, in-process


def _asgi(handler: Any) -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        response = await handler(Request(scope, receive))
        await response(scope, receive, send)

    return app


def _post(app: Any, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post(path, headers=headers, content=body)

    return asyncio.run(go())


def _get(app: Any, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path)

    return asyncio.run(go())


def _published(name: str, version: str, **kw: Any) -> tuple[dict[str, str], bytes]:
    return to_http_binary(new_event(MODEL_PUBLISHED, {"name": name, "version": version}, source="/t", **kw))


def test_model_published_takes_only_its_type_and_its_own_model() -> None:
    asked: list[str] = []

    def loader(version: str) -> tuple[str, str]:
        asked.append(version)
        return ("v1" if version == "latest" else version), version

    slot = ModelSlot("recommender", loader)
    assert slot.load()
    app = _asgi(dispatch(slot, {}))
    asked.clear()
    for name in ("vectors", "other-model"):
        r = _post(app, EVENTS_PATH, *_published(name, "v9"))
        assert r.status_code == 422 and f"bundle {name!r}" in r.json()["error"], r.text
        assert "serves only 'recommender'" in r.json()["error"]
    wrong = new_event("dev.zerorec.item.deleted.v1", {"item_id": "i1"}, source="/t")
    r = _post(app, EVENTS_PATH, *to_http_binary(wrong))
    assert r.status_code == 422 and MODEL_PUBLISHED in r.json()["error"]
    # a PingSource event whose extension names model.published is not a model.published event
    ping = new_event(PING_EVENT_TYPE, {"name": "recommender", "version": "v9"}, source="/t")
    ping[TASK_TYPE_EXTENSION] = MODEL_PUBLISHED
    r = _post(app, EVENTS_PATH, *to_http_binary(ping))
    assert r.status_code == 422 and PING_EVENT_TYPE in r.json()["error"], r.text
    headers, _ = _published("recommender", "v2")
    r = _post(app, EVENTS_PATH, headers, b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}")
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    _drive(slot, rounds=5)
    assert asked == [] and slot.version == "v1", "nothing was loaded for a refused event"

    r = _post(app, EVENTS_PATH, *_published("recommender", "v2"))
    assert r.status_code == 202, r.text
    for _ in range(100):
        if slot.version == "v2":
            break
        time.sleep(0.02)
    assert asked == ["v2"] and slot.version == "v2"


def test_health_before_a_model_and_routes_that_need_none() -> None:
    def loader(version: str) -> tuple[str, str]:
        raise NotFoundError("no bundle under models/m/LATEST in bucket 'b': run the init job")

    async def lookup(request: Request, stage: Any) -> Response:
        return json_response({"stage": stage})

    async def admin(request: Request) -> Response:
        return json_response({"accepted": True}, 202)

    slot = ModelSlot("m", loader, retry_s=60)
    assert not slot.load()
    serving = _asgi(dispatch(slot, {"/": lookup}))
    r = _get(serving, "/health")
    assert r.status_code == 503 and r.json()["status"] == "loading"
    assert "models/m/LATEST" in r.json()["reason"] and "init job" in r.json()["reason"]
    assert _post(serving, "/", {}, b"{}").status_code == 503

    item_like = _asgi(dispatch(slot, {"/": lookup}, {"/admin/items": admin}))
    r = _get(item_like, "/health")
    assert r.status_code == 200 and r.json()["status"] == "degraded" and "LATEST" in r.json()["reason"]
    assert _post(item_like, "/admin/items", {}, b"{}").status_code == 202
    assert _post(item_like, "/", {}, b"{}").status_code == 503, "a route that needs the model still waits"
