"""zerorec.observability: /metrics, trace context, JSON logs, consumer counts, the BFF's hooks."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from zerorec.observability import Instrumented, outgoing_traceparent
from zerorec.observability.consumer import ObservedApplier, event_lag_s
from zerorec.observability.logs import JsonFormatter
from zerorec.observability.metrics import (
    RouteLabels,
    model_loaded,
    record_recommendation,
    register_route_templates,
)
from zerorec.observability.trace import context_from, current, parse_traceparent

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


OK_ECHO = {"route": "/obs-echo", "method": "GET", "status": "200"}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"traceparent": outgoing_traceparent()})


async def _boom(request: Request) -> PlainTextResponse:
    return PlainTextResponse("no", status_code=503)


def app(**kw: object) -> Instrumented:
    inner = Starlette(routes=[Route("/obs-echo", _echo), Route("/obs-boom", _boom)])
    return Instrumented(inner, "test", **kw)  # type: ignore[arg-type]


async def _get(asgi: object, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=asgi)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path, headers=headers)


def test_traceparent_parse_and_continue() -> None:
    assert parse_traceparent(PARENT) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", True)
    for bad in (
        None,
        "",
        "garbage",
        PARENT.replace("00-", "ff-", 1),
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
    ):
        assert parse_traceparent(bad) is None
    ctx = context_from(PARENT)
    assert ctx.trace_id == "0af7651916cd43dd8448eb211c80319c" and ctx.parent_id == "b7ad6b7169203331"
    assert ctx.span_id != "b7ad6b7169203331" and ctx.traceparent.startswith("00-0af76519")
    fresh = context_from(None)
    assert (
        len(fresh.trace_id) == 32
        and fresh.parent_id is None
        and fresh.trace_id != context_from(None).trace_id
    )


def test_requests_counted_by_route_and_status_and_metrics_served() -> None:
    asgi = app()
    before_ok = sample("zerorec_http_requests_total", route="/obs-echo", method="GET", status="200")
    before_503 = sample("zerorec_http_request_duration_seconds_count", route="/obs-boom", status="503")
    before_404 = sample("zerorec_http_requests_total", route="unmatched", method="GET", status="404")

    async def run() -> httpx.Response:
        for _ in range(3):
            assert (await _get(asgi, "/obs-echo")).status_code == 200
        assert (await _get(asgi, "/obs-boom")).status_code == 503
        assert (await _get(asgi, "/no/such/path/123")).status_code == 404
        return await _get(asgi, "/metrics")

    metrics = asyncio.run(run())
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert (
        sample("zerorec_http_requests_total", route="/obs-echo", method="GET", status="200") == before_ok + 3
    )
    assert (
        sample("zerorec_http_request_duration_seconds_count", route="/obs-boom", status="503")
        == before_503 + 1
    )
    assert (
        sample("zerorec_http_requests_total", route="unmatched", method="GET", status="404") == before_404 + 1
    )
    assert 'zerorec_http_requests_total{method="GET",route="/obs-echo",status="200"}' in metrics.text
    assert "/no/such/path/123" not in metrics.text  # a made-up path never becomes a label
    assert 'route="/metrics"' not in metrics.text  # scrapes are not counted


def test_metrics_off_passes_metrics_path_through() -> None:
    r = asyncio.run(_get(app(metrics=False), "/metrics"))
    assert r.status_code == 404


def test_trace_continued_and_passed_downstream() -> None:
    asgi = app()
    r = asyncio.run(_get(asgi, "/obs-echo", {"traceparent": PARENT}))
    downstream = r.json()["traceparent"]
    trace_id, parent, _ = parse_traceparent(downstream)  # type: ignore[misc]
    assert trace_id == "0af7651916cd43dd8448eb211c80319c" and parent != "b7ad6b7169203331"
    assert r.headers["x-request-id"] == trace_id
    started = asyncio.run(_get(asgi, "/obs-echo"))  # no header: this hop starts a trace
    assert parse_traceparent(started.json()["traceparent"]) is not None
    assert started.headers["x-request-id"] != trace_id
    assert current.get() is None  # reset after the request


def test_route_labels_are_bounded() -> None:
    register_route_templates("/obs-items/{item_id}")
    route_label = RouteLabels()
    assert route_label("/obs-items/abc", 200) == "/obs-items/{item_id}"
    assert route_label("/anything", 404) == "unmatched"
    labels = {route_label(f"/obs-many/{i}", 200) for i in range(200)}
    assert "other" in labels and len(labels) <= 65


def test_json_log_line_carries_the_trace_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("recall"))
    logger = logging.getLogger("zerorec.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    token = current.set(context_from(PARENT))
    try:
        logger.warning("stage %s slow", "ranking", extra={"duration_ms": 12.5})
    finally:
        current.reset(token)
    logger.warning("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["msg"] == "stage ranking slow" and inside["function"] == "recall"
    assert inside["trace_id"] == "0af7651916cd43dd8448eb211c80319c" and inside["duration_ms"] == 12.5
    assert inside["level"] == "warning" and inside["ts"].endswith("Z")
    assert "trace_id" not in outside


def test_access_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="zerorec.access"):
        asyncio.run(_get(app(log_requests=True), "/obs-echo", {"traceparent": PARENT}))
    (record,) = [r for r in caplog.records if r.name == "zerorec.access"]
    assert record.getMessage() == "GET /obs-echo 200" and record.status == 200  # type: ignore[attr-defined]


def test_degraded_answers_counted_by_stage_and_cause() -> None:
    before = sample("zerorec_degraded_total", stage="ranking", cause="timeout")
    before_http = sample("zerorec_degraded_total", stage="user", cause="http_503")
    before_ans = sample("zerorec_recommendations_total", source="personalized", degraded="true")
    before_clean = sample("zerorec_recommendations_total", source="hot", degraded="false")
    record_recommendation("personalized", ["ranking_timeout", "user_http_503"])
    record_recommendation("hot", [])
    assert sample("zerorec_degraded_total", stage="ranking", cause="timeout") == before + 1
    assert sample("zerorec_degraded_total", stage="user", cause="http_503") == before_http + 1
    assert sample("zerorec_recommendations_total", source="personalized", degraded="true") == before_ans + 1
    assert sample("zerorec_recommendations_total", source="hot", degraded="false") == before_clean + 1


def test_model_version_gauge_moves_to_the_new_version() -> None:
    model_loaded("obs-model", "v1", 120.0)
    assert sample("zerorec_model_info", model="obs-model", version="v1") == 1
    model_loaded("obs-model", "v2", 80.0)
    assert sample("zerorec_model_info", model="obs-model", version="v2") == 1
    assert REGISTRY.get_sample_value("zerorec_model_info", {"model": "obs-model", "version": "v1"}) is None
    assert sample("zerorec_model_load_seconds", model="obs-model") == pytest.approx(0.08)


def _behavior(event_id: str, user: str, ts: str, kind: object = "click") -> object:
    from zerorec.cloudevents_io import new_event

    data = {"user_id": user, "item_id": "i1", "kind": kind, "timestamp": ts}
    return new_event("dev.zerorec.behavior.v1", data, source="/test", event_id=event_id, time=ts)


def test_consumer_counts_applied_duplicate_dead_lettered_and_lag() -> None:
    from zerorec.consumer import EventApplier
    from zerorec.errors import InvalidInputError
    from zerorec.storage.kv_memory import MemoryKVStore

    applier = ObservedApplier(EventApplier(MemoryKVStore()))
    kind = "dev.zerorec.behavior.v1"

    outcomes = [(kind, "applied"), (kind, "duplicate"), (kind, "dead_lettered"), ("other", "dead_lettered")]

    def counts() -> list[float]:
        events = [sample("zerorec_consumer_events_total", type=t, outcome=o) for t, o in outcomes]
        return [*events, sample("zerorec_consumer_lag_seconds_count")]

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2))
    before = counts()
    assert applier.apply(_behavior("obs-e1", "obs-u1", stamp)).applied
    assert not applier.apply(_behavior("obs-e1", "obs-u1", stamp)).applied  # redelivery
    bad = _behavior("obs-e2", "obs-u1", stamp, kind=42)
    with pytest.raises(InvalidInputError):
        applier.apply(bad)
    results = applier.apply_batch(
        [_behavior("obs-e3", "obs-u2", stamp), _behavior("obs-e1", "obs-u1", stamp), InvalidInputError("x")]
    )
    assert [r["status"] for r in results] == [200, 200, 400]
    after = counts()
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2, 1, 1, 2]
    lag = event_lag_s({"time": stamp})
    assert lag is not None and 1.5 < lag < 60
    assert event_lag_s({"time": "yesterday"}) is None and event_lag_s({}) is None


def test_bff_sends_traceparent_downstream_and_counts_degraded() -> None:
    """The BFF's own HTTP client adds the request's traceparent to every downstream call."""
    from zerorec.api import RecommendRequest
    from zerorec.bff import Recommender
    from zerorec.settings import Settings

    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
            )
            await reader.readexactly(length)
            heads.append(head)
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async def run() -> list[str]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        settings = Settings(recall_url=url, ranking_url=url, reranking_url=url, user_url=url, item_url=url)
        rec = Recommender(settings, hot_refresh_s=0)
        token = current.set(context_from(PARENT))
        try:
            resp = await rec.recommend(RecommendRequest(user_id="obs-user"))
        finally:
            current.reset(token)
            await rec.aclose()
            server.close()
        return resp.degraded

    before = sample("zerorec_degraded_total", stage="recall", cause="http_503")
    degraded = asyncio.run(run())
    assert "recall_http_503" in degraded
    assert sample("zerorec_degraded_total", stage="recall", cause="http_503") == before + 1
    assert heads, "the BFF called downstream"
    for head in heads:
        line = next(h for h in head.split(b"\r\n") if h.startswith(b"traceparent:"))
        assert line.split(b": ")[1].decode().startswith("00-0af7651916cd43dd8448eb211c80319c-")
