"""recall, ranking, reranking, user and item as functions-framework processes over real HTTP
(embedded backends: the model bundle in a directory, the KV in memory)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from fn_bundles import publish
from fn_stack import Stack, Tiny
from zerorec.api import MAX_BATCH_BODY_BYTES, MAX_BODY_BYTES
from zerorec.cloudevents_io import new_event, to_http_binary, to_http_structured
from zerorec.storage.objects_local import LocalObjectStore


def post(stack: Stack, fn: str, body: object, path: str = "/") -> httpx.Response:
    return httpx.post(stack.urls[fn] + path, json=body, timeout=10)


def health(stack: Stack, fn: str) -> dict:
    r = httpx.get(stack.urls[fn] + "/health", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_reports_the_loaded_version(embedded: Stack) -> None:
    for fn in embedded.urls:
        h = health(embedded, fn)
        assert h["status"] == "ok" and h["model_version"], (fn, h)


def test_recall_candidates_exclude_history_and_exclusions(embedded: Stack, tiny: Tiny) -> None:
    history = set(tiny.history("u1"))
    first = post(embedded, "recall", {"user_id": "u1", "n": 50}).json()
    ids = [c["item_id"] for c in first["candidates"]]
    assert 0 < len(ids) <= 50 and len(set(ids)) == len(ids)
    assert not history & set(ids)
    assert first["model_version"] == health(embedded, "recall")["model_version"]
    assert {c["channel"] for c in first["candidates"]} - {"hot", "fresh"}, "personal channels answered"
    scores = [c["score"] for c in first["candidates"]]
    assert scores == sorted(scores, reverse=True)
    again = post(embedded, "recall", {"user_id": "u1", "n": 50, "exclude": ids[:5]}).json()
    assert not set(ids[:5]) & {c["item_id"] for c in again["candidates"]}


def test_recall_uses_recent_items_from_the_request(embedded: Stack, tiny: Tiny) -> None:
    cold = post(embedded, "recall", {"user_id": "brand-new", "n": 30}).json()["candidates"]
    assert {c["channel"] for c in cold} <= {"hot", "fresh"}
    clicked = tiny.history("u1")[:3]
    warm = post(embedded, "recall", {"user_id": "brand-new", "n": 30, "recent_items": clicked}).json()
    ids = [c["item_id"] for c in warm["candidates"]]
    assert not set(clicked) & set(ids), "a clicked item is never recalled again"
    assert {c["channel"] for c in warm["candidates"]} - {"hot", "fresh"}, "item-CF etc. used the clicks"
    assert ids != [c["item_id"] for c in cold]


def test_hot_list(embedded: Stack) -> None:
    items = post(embedded, "recall", {"n": 7}, "/hot").json()["items"]
    assert len(items) == 7 and all(i["channel"] == "hot" for i in items)
    drama = post(embedded, "recall", {"n": 5, "category": "drama"}, "/hot").json()["items"]
    assert 0 < len(drama) <= 5
    assert post(embedded, "recall", {"n": 5, "category": "no-such"}, "/hot").json()["items"] == []


def test_ranking_scores_every_candidate_in_order(embedded: Stack) -> None:
    recalled = post(embedded, "recall", {"user_id": "u2", "n": 40}).json()
    cands, channels = recalled["candidates"], recalled["signal_channels"]
    cands.append({"item_id": "unknown-item", "score": 0.1, "channel": "hot"})
    body = {"user_id": "u2", "candidates": cands, "signal_channels": channels, "context": {"device": "ios"}}
    r = post(embedded, "ranking", body)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["scores"]) == len(cands) and body["scores"][-1] == 0.0
    assert all(0.0 <= s <= 1.0 for s in body["scores"]) and len(set(body["scores"][:-1])) > 1
    assert body["model_version"]
    same = post(
        embedded, "ranking", {"user_id": "u2", "candidates": cands[:-1], "signal_channels": channels}
    ).json()["scores"]
    assert same == pytest.approx(body["scores"][:-1], abs=1e-6), "deterministic, order kept"
    assert post(embedded, "ranking", {"user_id": "u2", "candidates": []}).json()["scores"] == []


def test_reranking_filters_seen_and_explains(embedded: Stack) -> None:
    cands = post(embedded, "recall", {"user_id": "u3", "n": 40}).json()["candidates"]
    items = [
        {"item_id": c["item_id"], "score": 1.0 - k / 100, "channel": c["channel"]}
        for k, c in enumerate(cands)
    ]
    seen = [items[0]["item_id"], items[2]["item_id"]]
    out = post(embedded, "reranking", {"user_id": "u3", "items": items, "n": 10, "seen": seen}).json()[
        "items"
    ]
    ids = [i["item_id"] for i in out]
    assert len(ids) == 10 and len(set(ids)) == 10 and not set(seen) & set(ids)
    assert all(i["reasons"] for i in out)
    assert ids[0] == items[1]["item_id"], "without diversity, the best unseen item leads"


def test_user_profile(embedded: Stack, tiny: Tiny) -> None:
    p = post(embedded, "user", {"user_id": "u1"}).json()
    history = tiny.history("u1")
    assert p["is_new"] is False and set(p["recent_items"]) == set(history)
    assert p["recent_items"][0] == history[-1], "newest first"
    assert p["category_affinity"] and p["history"]["trained_interactions"] == len(history)
    new = post(embedded, "user", {"user_id": "nobody"}).json()
    assert new["is_new"] is True and new["recent_items"] == [] and new["seen_items"] == []


def test_item_metadata(embedded: Stack, tiny: Tiny) -> None:
    ids = tiny.items.item_id.tolist()[:3]
    out = post(embedded, "item", {"item_ids": [*ids, "nope"]}).json()["items"]
    assert set(out) == set(ids)
    row = tiny.items.set_index("item_id").loc[ids[0]]
    assert out[ids[0]]["categories"] == list(row.categories) and out[ids[0]]["created_at"].endswith("Z")


BAD = [
    ("recall", "/", {"user_id": "u1", "n": 10, "bogus": 1}, 422),
    ("recall", "/", {"user_id": "u1", "n": 0}, 422),
    ("recall", "/", {"user_id": "u1", "n": "10"}, 422),
    ("recall", "/", {"n": 10}, 422),
    ("recall", "/hot", {"n": 100000}, 422),
    ("ranking", "/", {"user_id": "u1", "candidates": [{"item_id": "i1"}]}, 422),
    ("ranking", "/", {"user_id": "u1", "candidates": "i1"}, 422),
    ("reranking", "/", {"user_id": "u1", "items": [], "n": 101}, 422),
    (
        "reranking",
        "/",
        {"user_id": "u1", "items": [{"item_id": "i1", "score": "x", "channel": "c"}], "n": 1},
        422,
    ),
    ("user", "/", {"user_id": ""}, 422),
    ("user", "/", {"user_id": "has space"}, 422),
    ("item", "/", {"item_ids": "i1"}, 422),
    ("item", "/", {"item_ids": [""]}, 422),
    ("item", "/admin/items", {"upsert": "x"}, 422),
    ("item", "/nope", {}, 404),
]


@pytest.mark.parametrize(("fn", "path", "body", "status"), BAD)
def test_bad_requests_get_a_4xx_with_a_reason(
    embedded: Stack, fn: str, path: str, body: object, status: int
) -> None:
    r = post(embedded, fn, body, path)
    assert r.status_code == status, r.text
    assert r.json()["error"]


@pytest.mark.parametrize("fn", ["recall", "ranking", "reranking", "user", "item"])
def test_malformed_oversized_and_wrong_method(embedded: Stack, fn: str) -> None:
    url = embedded.urls[fn] + "/"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]
    limit = MAX_BATCH_BODY_BYTES if fn in ("ranking", "reranking") else MAX_BODY_BYTES  # candidate batches
    r = httpx.post(url, content=b"[" + b"1," * limit + b"1]")
    assert r.status_code == 413 and "larger" in r.json()["error"]
    r = httpx.get(url)
    assert r.status_code == 405 and r.json()["error"]
    r = httpx.post(embedded.urls[fn] + "/events/model-published", content=b"{}")
    assert r.status_code == 400 and "CloudEvent" in r.json()["error"]
    assert httpx.post(embedded.urls[fn] + "/health").status_code == 405


def _published(name: str, version: str) -> object:
    return new_event(
        "dev.zerorec.model.published.v1",
        {"name": name, "version": version},
        source="/zerorec/model-training",
        subject=name,
    )


def _wait_version(stack: Stack, fn: str, version: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        h = health(stack, fn)
        if h["model_version"] == version:
            return h
        time.sleep(0.1)
    raise AssertionError(f"{fn} still on {health(stack, fn)} after {timeout_s} s\n{stack.log(fn)[-2000:]}")


def test_model_published_hot_reload_then_bad_bundle_refused(embedded: Stack, tiny: Tiny) -> None:
    store = LocalObjectStore(Path(embedded.env["OBJECTS"]))
    v2 = publish(store, "recommender", tiny.files, version="v2-reload")
    # requests keep flowing while every function reloads
    errors: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.post(embedded.urls["recall"] + "/", json={"user_id": "u1", "n": 20})
                if r.status_code != 200:
                    errors.append(r.text)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        for k, fn in enumerate(embedded.urls):
            encode = to_http_binary if k % 2 == 0 else to_http_structured
            headers, body = encode(_published("recommender", v2))
            r = httpx.post(embedded.urls[fn] + "/events/model-published", content=body, headers=headers)
            assert r.status_code == 202, r.text
        for fn in embedded.urls:
            _wait_version(embedded, fn, v2)
    finally:
        stop.set()
        t.join()
    assert not errors
    assert post(embedded, "recall", {"user_id": "u1", "n": 5}).json()["model_version"] == v2

    # a bundle whose file does not match its manifest is refused; v2 keeps serving (each function
    # verifies every file it uses: meta.json is everyone's)
    v3 = publish(store, "recommender", tiny.files, version="v3-corrupt")
    store.put(f"models/recommender/{v3}/meta.json", b"not the published bytes")
    headers, body = to_http_binary(_published("recommender", v3))
    for fn in ("recall", "ranking"):
        assert (
            httpx.post(
                embedded.urls[fn] + "/events/model-published", content=body, headers=headers
            ).status_code
            == 202
        )
    for fn in ("recall", "ranking"):
        deadline = time.monotonic() + 30
        while "last_error" not in (h := health(embedded, fn)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert h["model_version"] == v2 and "IntegrityError" in h["last_error"], h
    r = post(
        embedded,
        "ranking",
        {"user_id": "u1", "candidates": [{"item_id": "i1", "score": 1, "channel": "hot"}]},
    )
    assert r.status_code == 200 and r.json()["model_version"] == v2

    # another model's event is refused (never loaded); an event of another type is refused
    for other in ("other-model", "vectors"):
        headers, body = to_http_binary(_published(other, "v9"))
        r = httpx.post(embedded.urls["user"] + "/events/model-published", content=body, headers=headers)
        assert r.status_code == 422 and "serves only 'recommender'" in r.json()["error"], r.text
    assert health(embedded, "user")["model_version"] == v2
    wrong = new_event("dev.zerorec.item.deleted.v1", {"item_id": "i1"}, source="/t")
    headers, body = to_http_binary(wrong)
    r = httpx.post(embedded.urls["user"] + "/events/model-published", content=body, headers=headers)
    assert r.status_code == 422 and "model.published" in r.json()["error"]
    bad = json.dumps(
        {
            "specversion": "1.0",
            "id": "1",
            "source": "/t",
            "type": "dev.zerorec.model.published.v1",
            "data": {"name": "recommender", "version": "bad version!"},
        }
    )
    r = httpx.post(
        embedded.urls["user"] + "/events/model-published",
        content=bad,
        headers={"content-type": "application/cloudevents+json"},
    )
    assert r.status_code == 400 and "version" in r.json()["error"]


def test_item_admin_publishes_catalogue_events(embedded: Stack) -> None:
    good = {
        "item_id": "new-1",
        "title": "New",
        "categories": ["drama"],
        "created_at": "2024-05-01T12:00:00Z",
        "attributes": {},
    }
    r = post(embedded, "item", {"upsert": [good, {"item_id": "bad"}], "delete": ["old-1"]}, "/admin/items")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["upserted"]["published"] == 1 and body["upserted"]["rejected"] == 1
    assert body["upserted"]["reasons"][0]["index"] == 1 and body["deleted"]["published"] == 1


def test_a_full_candidate_batch_is_not_too_large(embedded: Stack) -> None:
    """500 candidates with their channel scores are over the public 64 KiB body limit: ranking and
    reranking take them (the BFF sends exactly this)."""
    scores = {"ease": 0.123456789, "als": 0.987654321, "itemcf": 1.5, "hot": 42.0}
    cands = [
        {"item_id": f"new-{k:05d}", "score": 1 - k / 500, "channel": "ease", "channel_scores": scores}
        for k in range(500)
    ]
    body = {"user_id": "u1", "candidates": cands}
    assert len(orjson.dumps(body)) > MAX_BODY_BYTES
    r = post(embedded, "ranking", body)
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == [0.0] * 500  # ids the model does not know score 0
    items = [{"item_id": c["item_id"], "score": c["score"], "channel": "ease"} for c in cands] * 2
    r = post(embedded, "reranking", {"user_id": "u1", "items": items, "n": 10})
    assert r.status_code == 200, r.text
