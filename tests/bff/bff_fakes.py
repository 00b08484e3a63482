"""Fake downstream functions (user, recall, ranking, reranking, item) as real HTTP servers.

Each fake is a Starlette app under uvicorn on a free 127.0.0.1 port, in a thread. Tests switch a
fake's behaviour (ok | http_500 | garbage | sleep) through `fakes.mode`, or point the BFF at a closed
port to get "connection refused". Every call is logged with its start and end time.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from zerorec.api import (
    HotRequest,
    ItemRequest,
    PipelineRequest,
    RankingRequest,
    RecallRequest,
    RerankRequest,
    UserRequest,
    validation_reason,
)
from zerorec.settings import Settings

SERVICES = ("user", "recall", "ranking", "reranking", "item", "pipeline")


@dataclass
class Call:
    service: str
    path: str
    body: dict[str, Any]
    start: float
    end: float = 0.0
    invalid: str | None = None  # why the body broke the request model, if it did


@dataclass
class Fakes:
    """Shared state of the fake functions."""

    urls: dict[str, str] = field(default_factory=dict)
    mode: dict[str, str] = field(default_factory=dict)  # service or "recall/hot" -> behaviour
    delay: dict[str, float] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.mode.clear()
            self.delay.clear()
            self.calls.clear()

    def called(self, service: str, path: str = "/") -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.service == service and c.path == path]

    def settings(self, down: tuple[str, ...] = (), **overrides: Any) -> Settings:
        """Settings pointing the BFF at the fakes; services in `down` get a closed port."""
        urls = {f"{s}_url": (f"http://127.0.0.1:{closed_port()}" if s in down else self.urls[s])
                for s in SERVICES if s != "pipeline"}
        if overrides.pop("compact", False):  # the compact topology: the BFF calls the pipeline fake
            urls["pipeline_url"] = (
                f"http://127.0.0.1:{closed_port()}" if "pipeline" in down else self.urls["pipeline"]
            )
        # Generous by default (tests run on loaded machines); deadline tests set their own.
        # The records of what was served (zerorec.ctr) go to the in-process KV, not a file.
        values: dict[str, Any] = {"deadline_ms": 2000, "total_budget_ms": 5000, "recall_candidates": 50,
                                  "kv_store": "memory"}
        values.update(urls)
        values.update(overrides)
        return Settings(**values)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def closed_port() -> int:
    """A port nothing listens on (connection refused)."""
    with free_socket() as sock:
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- fake behaviour


def _user(body: dict[str, Any]) -> Any:
    if body["user_id"].startswith("new"):
        return 404, {"error": "unknown user"}
    return {"user_id": body["user_id"], "recent_items": ["i7"], "seen_items": ["i1"],
            "category_affinity": {"c1": 0.5}, "attributes": {}, "is_new": False}


def _recall(body: dict[str, Any]) -> Any:
    excluded = set(body.get("exclude", []))
    ks = [k for k in range(min(body["n"], 30)) if f"i{k}" not in excluded]
    out = {"item_ids": [f"i{k}" for k in ks], "scores": [round(1 - k / 100, 4) for k in ks],
           "channel": [0] * len(ks), "channels": ["als"], "found": [1] * len(ks), "model_version": "als-1"}
    if body.get("_demote"):  # set by the endpoint when fakes.mode["recall/demote"] is on
        out["demote"] = [0.5 if k == 29 else 1.0 for k in ks]
    return out


def _hot(body: dict[str, Any]) -> Any:
    return {"items": [{"item_id": f"h{k}", "score": 100 - k, "channel": "hot"} for k in range(body["n"])]}


def _ranking(body: dict[str, Any]) -> Any:
    # Reverses recall's order so a test can tell ranked from recall order.
    m = len(body["candidates"]["item_ids"])
    return {"scores": [float(k) for k in range(m)], "model_version": "deepfm-1"}


def _reranking(body: dict[str, Any]) -> Any:
    seen = set(body["seen"])
    c = body["candidates"]
    items = [{"item_id": i, "score": s, "channel": c["channels"][ch], "reasons": ["mmr"]}
             for i, s, ch in zip(c["item_ids"], c["scores"], c["channel"], strict=True) if i not in seen]
    return {"items": items[: body["n"]]}


def _pipeline(body: dict[str, Any]) -> Any:
    # recall's fake candidates, minus excluded and the user's seen i1, best first
    excluded = {*body["exclude"], "i1"}
    items = [{"item_id": f"i{k}", "score": 1 - k / 100, "channel": "als", "reasons": ["compact"]}
             for k in range(30) if f"i{k}" not in excluded]
    return {"items": items[: body["n"]], "model_version": "pipe-1"}


def _item(body: dict[str, Any]) -> Any:
    return {"items": {i: {"title": f"Title {i}", "categories": ["c1"], "created_at": "2026-01-01"}
                      for i in body["item_ids"]}}


REQUEST_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("user", "/"): UserRequest, ("recall", "/"): RecallRequest, ("recall", "/hot"): HotRequest,
    ("ranking", "/"): RankingRequest, ("reranking", "/"): RerankRequest, ("item", "/"): ItemRequest,
    ("pipeline", "/"): PipelineRequest, ("pipeline", "/hot"): HotRequest,
}

HANDLERS = {
    ("user", "/"): _user, ("recall", "/"): _recall, ("recall", "/hot"): _hot,
    ("ranking", "/"): _ranking, ("reranking", "/"): _reranking, ("item", "/"): _item,
    ("pipeline", "/"): _pipeline, ("pipeline", "/hot"): _hot,
}


def make_app(service: str, fakes: Fakes) -> Starlette:
    async def endpoint(request: Request) -> Response:
        path = request.url.path
        raw = await request.body()
        body = orjson.loads(raw)
        call = Call(service, path, body, time.perf_counter())
        with fakes.lock:
            fakes.calls.append(call)
        try:  # the BFF must send exactly the contract (strict request models)
            REQUEST_MODELS[(service, path)].model_validate_json(raw)
        except ValidationError as exc:
            call.invalid = validation_reason(exc)
            call.end = time.perf_counter()
            return Response(orjson.dumps({"error": call.invalid}), status_code=422)
        key = service if path == "/" else f"{service}{path}"
        mode = fakes.mode.get(key, "ok")
        try:
            if fakes.delay.get(key):
                await asyncio.sleep(fakes.delay[key])
            if mode == "http_500":
                return Response(b'{"error":"boom"}', status_code=500, media_type="application/json")
            if mode == "garbage":
                return Response(b'{"unexpected": true}', media_type="application/json")
            if fakes.mode.get(f"{service}/demote") == "on":
                body = {**body, "_demote": True}
            result = HANDLERS[(service, path)](body)
            status = 200
            if isinstance(result, tuple):
                status, result = result
            return Response(orjson.dumps(result), status_code=status, media_type="application/json")
        finally:
            call.end = time.perf_counter()

    routes = [Route("/", endpoint, methods=["POST"]), Route("/hot", endpoint, methods=["POST"])]
    return Starlette(routes=routes)


class ServerThread:
    """uvicorn on a pre-bound socket, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.sock = free_socket()
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()
