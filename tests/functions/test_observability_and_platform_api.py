"""Observability and the platform API across real function processes (the five serving functions
and the BFF, one stack for the module):

- the BFF's /metrics counts exactly what a load generator (zerorec.bench_serve.drive, the `zerorec
  bench serve` client) sent, every stage's /metrics counts its share, and one trace id runs through
  every function's JSON access log;
- similar items, similar users, latest and popular per category through the BFF, catalogue export
  and import on item, every new route in its function's OpenAPI document and the /docs page."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from fn_bundles import publish
from fn_stack import SERVING, Stack, Tiny, free_port, start_stack, stop_stack
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


# ------------------------------------------------------------------------------------ platform API


def _post(stack: Stack, fn: str, path: str, body: dict, **kw: object) -> httpx.Response:
    return httpx.post(stack.urls[fn] + path, json=body, timeout=30, **kw)  # type: ignore[arg-type]


def test_similar_items_from_the_bundles_neighbours(observed: Stack, tiny: Tiny) -> None:
    item = tiny.interactions.item_id.value_counts().index[0]  # a popular item: it has neighbours
    r = _post(observed, "recommender", "/similar-items", {"item_id": item, "n": 5})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["channel"] == "itemcf" and 1 <= len(doc["items"]) <= 5 and doc["model_version"]
    ids = [x["item_id"] for x in doc["items"]]
    assert item not in ids and len(set(ids)) == len(ids)
    scores = [x["score"] for x in doc["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(x["metadata"] is not None for x in doc["items"])  # hydrated by the item function
    # ALS neighbours on request; recall's own route answers the same contract.
    als = _post(observed, "recall", "/similar-items", {"item_id": item, "n": 3, "channel": "als"}).json()
    assert (
        als["channel"] == "als"
        and len(als["items"]) == 3
        and item not in [x["item_id"] for x in als["items"]]
    )
    # Co-interaction: the top neighbour shares users with the item.
    users = set(tiny.interactions[tiny.interactions.item_id == item].user_id)
    top_users = set(tiny.interactions[tiny.interactions.item_id == ids[0]].user_id)
    assert users & top_users
    # Neighbours of one category only (Gorse's neighbors/{category}).
    category = tiny.items.categories.explode().value_counts().index[0]
    for channel in ("itemcf", "als"):
        body = {"item_id": item, "n": 5, "channel": channel, "category": category}
        got = _post(observed, "recommender", "/similar-items", body).json()
        assert got["items"], (channel, got)
        assert all(category in x["metadata"]["categories"] for x in got["items"]), channel
    missing = _post(observed, "recommender", "/similar-items", {"item_id": "no-such-item"})
    assert missing.status_code == 404 and "recall" in missing.json()["error"]
    bad = _post(observed, "recommender", "/similar-items", {"item_id": item, "n": 0})
    assert bad.status_code == 422


def test_similar_users_share_items(observed: Stack, tiny: Tiny) -> None:
    user = tiny.interactions.user_id.value_counts().index[0]
    r = _post(observed, "recommender", "/similar-users", {"user_id": user, "n": 5})
    assert r.status_code == 200, r.text
    users = r.json()["users"]
    assert 1 <= len(users) <= 5 and user not in [u["user_id"] for u in users]
    mine = set(tiny.history(user))
    for u in users:
        assert 0 < u["common_items"] <= len(mine & set(tiny.history(u["user_id"])))
        assert 0 < u["score"] <= 1
    assert [u["score"] for u in users] == sorted((u["score"] for u in users), reverse=True)
    assert _post(observed, "user", "/similar-users", {"user_id": "nobody-at-all"}).status_code == 404


def test_latest_and_popular_per_category(observed: Stack, tiny: Tiny) -> None:
    category = tiny.items.categories.explode().value_counts().index[0]
    latest = _post(observed, "recommender", "/latest", {"n": 5, "category": category})
    assert latest.status_code == 200, latest.text
    items = latest.json()["items"]
    assert len(items) == 5 and all(category in x["metadata"]["categories"] for x in items)
    stamps = [x["score"] for x in items]
    assert stamps == sorted(stamps, reverse=True)
    everything = _post(observed, "recommender", "/latest", {"n": 5}).json()["items"]
    assert everything[0]["score"] >= stamps[0]
    popular = _post(observed, "recommender", "/popular", {"n": 5, "category": category})
    assert popular.status_code == 200 and len(popular.json()["items"]) == 5
    assert all(category in x["metadata"]["categories"] for x in popular.json()["items"])


def test_catalogue_export_and_import_on_item(observed: Stack, tiny: Tiny) -> None:
    r = _post(observed, "item", "/admin/items/export", {"format": "jsonl"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(x) for x in r.text.splitlines()]
    assert {x["item_id"] for x in rows} == set(map(str, tiny.items.item_id))
    parquet = _post(observed, "item", "/admin/items/export", {"format": "parquet", "limit": 7})
    import io

    import pyarrow.parquet as pq

    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 7
    body = "".join(json.dumps(x) + "\n" for x in rows[:3]).encode()
    imported = httpx.post(
        observed.urls["item"] + "/admin/items/import",
        content=body,
        headers={"content-type": "application/x-ndjson"},
        timeout=30,
    )
    assert imported.status_code == 202 and imported.json()["published"] == 3, imported.text
    wrong = httpx.post(
        observed.urls["item"] + "/admin/items/import", content=b"x", headers={"content-type": "text/csv"}
    )
    assert wrong.status_code == 422 and "content-type" in wrong.json()["error"]


def test_new_routes_in_the_bffs_openapi_and_docs_page(observed: Stack) -> None:
    doc = httpx.get(observed.urls["recommender"] + "/openapi.json", timeout=10).json()
    assert {"/recommend", "/similar-items", "/similar-users", "/latest", "/popular"} <= set(doc["paths"])
    page = httpx.get(observed.urls["recommender"] + "/docs", timeout=10)
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
    recall = httpx.get(observed.urls["recall"] + "/openapi.json", timeout=10).json()
    assert {"/", "/hot", "/similar-items", "/latest"} == set(recall["paths"])
    assert "SimilarItemsResponse" in recall["components"]["schemas"]
