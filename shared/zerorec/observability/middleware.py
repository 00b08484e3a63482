"""The ASGI wrapper every function is served through (`zerorec.runner`): `GET /metrics`, request
counts and latency by route and status, the request's trace context (W3C `traceparent`: continued
from the caller, or started here), an `x-request-id` response header with the trace id, an optional
access log line, and an optional OpenTelemetry server span.

Per request it costs two clock reads, a header scan, a contextvar set/reset, one cached counter and
one histogram update: about 5 us of CPU (tests/observability/test_tracing_and_docs.py measures it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from zerorec.observability.metrics import LATENCY, REQUESTS, RouteLabels
from zerorec.observability.trace import context_from, current

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

METRICS_PATH = "/metrics"
MAX_CACHED_LABELS = 1024
access_log = logging.getLogger("zerorec.access")


class Instrumented:
    """Wraps an ASGI app; see the module doc. `tracing`: a `zerorec.observability.otel.Tracing`."""

    def __init__(
        self,
        app: ASGIApp,
        function: str,
        *,
        metrics: bool = True,
        log_requests: bool = False,
        tracing: Any = None,
    ) -> None:
        self.app = app
        self.function = function
        self.metrics = metrics
        self.log_requests = log_requests
        self.tracing = tracing
        self.routes = RouteLabels()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        if log_requests:
            access_log.setLevel(logging.INFO)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == METRICS_PATH and self.metrics:
            await _serve_metrics(scope, send)
            return
        start = time.perf_counter()
        traceparent = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                traceparent = value.decode("latin-1")
                break
        span = None
        if self.tracing is not None:
            span, ctx = self.tracing.start(scope["method"], path, traceparent)
        else:
            ctx = context_from(traceparent)
        token = current.set(ctx)
        request_id = ctx.trace_id.encode("ascii")
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            if self.metrics:
                self._record(path, scope["method"], status, elapsed)
            if self.log_requests:
                _log_access(scope["method"], path, status, elapsed)
            if span is not None:
                self.tracing.end(span, self.routes(path, status), status)
            current.reset(token)

    def _record(self, path: str, method: str, status: int, elapsed: float) -> None:
        key = (path, method, status)
        children = self._children.get(key)
        if children is None:
            route = self.routes(path, status)
            children = (REQUESTS.labels(route, method, str(status)), LATENCY.labels(route, str(status)))
            if len(self._children) < MAX_CACHED_LABELS:
                self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)


def _log_access(method: str, path: str, status: int, elapsed: float) -> None:
    access_log.info(
        "%s %s %d", method, path, status, extra={"status": status, "duration_ms": round(elapsed * 1000, 3)}
    )


async def _serve_metrics(scope: Scope, send: Send) -> None:
    """Prometheus' text exposition of this process's registry (GET or HEAD)."""
    if scope["method"] not in ("GET", "HEAD"):
        body, status, ctype = b'{"error": "use GET /metrics"}', 405, b"application/json"
    else:
        body, status, ctype = generate_latest(REGISTRY), 200, CONTENT_TYPE_LATEST.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
