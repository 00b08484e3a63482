"""Observability across real function processes: the BFF's /metrics counts exactly what a load
generator (zerorec.bench_serve.drive, the `zerorec bench serve` client) sent, every stage's
/metrics counts its share, and one trace id runs through every function's JSON access log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from conftest import SERVING, Stack, Tiny, free_port, start_stack, stop_stack
from fn_bundles import publish
from zerorec.bench_serve import drive
from zerorec.observability.scrape import delta, recommend_counts, scrape, total

from local.functions import ff, function_env

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def observed(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The five serving functions and the BFF, access log on, embedded backends."""
    from zerorec.storage.objects_local import LocalObjectStore

    data = tmp_path_factory.mktemp("obs-data")
    publish(LocalObjectStore(data / "objects"), "recommender", tiny.files)
    services = [ff(name, free_port()) for name in SERVING]
    urls = {f"ZEROREC_{s.name.upper()}_URL": s.url() for s in services}
    services.append(ff("recommender", free_port()))
    env = function_env(
        False,
        data,
        {"ZEROREC_KV_STORE": "memory", "ZEROREC_EVENT_BUS": "memory", "ZEROREC_ACCESS_LOG": "1", **urls},
    )
    env["LOG_LEVEL"] = "info"
    stack = start_stack(services, env, data / "logs")
    yield stack
    stop_stack(stack)


def test_metrics_count_what_the_bench_sent(observed: Stack, tiny: Tiny) -> None:
    users = sorted(set(tiny.interactions.user_id))[:20]
    bodies = [orjson.dumps({"user_id": u, "n": 10}) for u in users]
    port = urlsplit(observed.urls["recommender"]).port
    before = {name: scrape(url) for name, url in observed.urls.items()}
    stats = asyncio.run(drive(port, "/recommend", bodies, 4, 60.0, 120))  # type: ignore[arg-type]
    after = {name: scrape(url) for name, url in observed.urls.items()}

    counts = recommend_counts(before["recommender"], after["recommender"])
    assert len(stats.latencies_s) + stats.errors == 120
    assert counts["requests"] == 120 and counts["ok"] == len(stats.latencies_s)
    assert counts["degraded"] == stats.degraded
    # Every personalized answer called user, recall, ranking, reranking and item once each.
    personalized = delta(
        before["recommender"], after["recommender"], "zerorec_recommendations_total", source="personalized"
    )
    assert personalized > 0
    for stage in ("user", "recall", "ranking", "reranking"):
        got = delta(before[stage], after[stage], "zerorec_http_requests_total", route="/")
        assert got >= personalized, (stage, got, personalized)
    latency = delta(
        before["recommender"],
        after["recommender"],
        "zerorec_http_request_duration_seconds_count",
        route="/recommend",
    )
    assert latency == 120
    for stage in ("recall", "ranking", "user"):
        assert total(after[stage], "zerorec_model_info", model="recommender") == 1
        assert total(after[stage], "zerorec_model_load_seconds", model="recommender") > 0
        assert total(after[stage], "zerorec_cold_start_seconds", function=stage) > 0


def test_one_trace_id_in_every_functions_log(observed: Stack, tiny: Tiny) -> None:
    user = sorted(set(tiny.interactions.user_id))[0]
    r = httpx.post(
        observed.urls["recommender"] + "/recommend",
        json={"user_id": user, "n": 5},
        headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == TRACE
    assert r.json()["source"] == "personalized", r.json()
    for name in ("recommender", "user", "recall", "ranking", "reranking", "item"):
        lines = [json.loads(x) for x in observed.log(name).splitlines() if x.startswith("{")]
        hits = [x for x in lines if x.get("trace_id") == TRACE and x.get("logger") == "zerorec.access"]
        assert hits, f"{name}: no access log line with trace {TRACE}"
        assert hits[0]["function"] == name and hits[0]["status"] == 200
