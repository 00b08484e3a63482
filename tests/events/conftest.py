"""Fixtures for the event tests: the repo root on sys.path (for local.eventing) and a real HTTP sink."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Sink:
    """A starlette app on a free 127.0.0.1 port; `respond(received, n) -> (status, body)` decides answers."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    respond: Callable[[Received, int], tuple[int, bytes]] = lambda r, n: (200, b"")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(f"sink got {len(self.requests)} requests, wanted {count}")


@pytest.fixture
def sink() -> Iterator[Sink]:
    state = Sink()

    async def endpoint(request: Request) -> Response:
        received = Received(
            request.url.path, {k.lower(): v for k, v in request.headers.items()}, await request.body()
        )
        with state.lock:
            state.requests.append(received)
            n = len(state.requests)
        status, body = await asyncio.to_thread(state.respond, received, n)
        return Response(body, status_code=status)

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "sink did not start"
        time.sleep(0.01)
    yield state
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
