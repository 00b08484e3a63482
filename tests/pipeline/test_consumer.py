"""functions/consumer in-process on the embedded KV: behavior and item events, idempotency by id,
4xx for events to refuse (the KafkaSource dead-letters them at once), 5xx when the KV is down."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from pipeline_helpers import call, click
from zerorec.cloudevents_io import BATCH, new_event, to_http_binary, to_http_structured
from zerorec.consumer import EventApplier
from zerorec.realtime import (
    FRESH_KEY,
    hot_key,
    hot_reads,
    item_key,
    user_state_from,
    user_state_reads,
)
from zerorec.storage import kv_store
from zerorec.storage.kv import HGetAll, ZTop
from zerorec.storage.kv_memory import MemoryKVStore

from local.eventing.kafka_source import is_retryable


def item(item_id: str, *cats: str, created: str = "2024-05-01T12:00:00Z") -> dict[str, Any]:
    return {
        "item_id": item_id,
        "title": item_id.upper(),
        "categories": list(cats),
        "created_at": created,
        "attributes": {"brand": "b"},
    }


def send(
    app: Any, event_type: str, data: Any, *, event_id: str | None = None, structured: bool = False
) -> Any:
    event = new_event(event_type, data, source="/test", event_id=event_id)
    headers, body = (to_http_structured if structured else to_http_binary)(event)
    return call(app, "POST", "/", headers=headers, content=body)


@pytest.fixture
def app(make_app: Any) -> Any:
    return make_app("consumer", ZEROREC_CONSUMER_CATEGORY_CACHE_S="0")


def test_click_updates_recent_seen_hot_and_affinity_once(app: Any, namespace: str) -> None:
    user, it = f"{namespace}u", f"{namespace}i"
    assert send(app, "dev.zerorec.item.upserted.v1", item(it, "books", "sci-fi")).status_code == 200
    first = send(app, "dev.zerorec.behavior.v1", click(user, it), event_id=f"{namespace}-e1")
    assert first.status_code == 200 and first.json()["applied"] is True
    again = send(app, "dev.zerorec.behavior.v1", click(user, it), event_id=f"{namespace}-e1", structured=True)
    assert again.status_code == 200 and again.json()["applied"] is False  # redelivery: no double count
    kv = kv_store()
    state = user_state_from(user, kv.read(user_state_reads(user)))
    assert state.recent_items == [it] and state.seen_items == [it]
    assert state.category_affinity == {"books": 1.0, "sci-fi": 1.0}
    (hot,) = kv.read(hot_reads(1000))
    assert it in dict(hot)
    (books,) = kv.read([ZTop(hot_key("books"), 1000)])
    assert it in dict(books)


def test_item_upsert_replaces_and_delete_removes(app: Any, namespace: str) -> None:
    it = f"{namespace}i"
    send(app, "dev.zerorec.item.upserted.v1", item(it, "a", "b"))
    send(app, "dev.zerorec.behavior.v1", click(f"{namespace}u", it))
    send(app, "dev.zerorec.item.upserted.v1", item(it, "b", created="2024-06-01T00:00:00Z"))
    kv = kv_store()
    stored, fresh, cat_a = kv.read(
        [HGetAll(item_key(it)), ZTop(FRESH_KEY, 100_000), ZTop(hot_key("a"), 1000)]
    )
    assert stored["title"] == it.upper() and stored["categories"] == '["b"]'
    assert dict(fresh)[it] == pytest.approx(1717200000.0)
    assert it not in dict(cat_a)  # left the hot list of the category it lost
    r = send(app, "dev.zerorec.item.deleted.v1", {"item_id": it, "reason": "gone"})
    assert r.status_code == 200
    stored, fresh, hot, cat_b = kv.read(
        [HGetAll(item_key(it)), ZTop(FRESH_KEY, 100_000), ZTop(hot_key(), 100_000), ZTop(hot_key("b"), 1000)]
    )
    assert stored == {} and it not in dict(fresh) and it not in dict(hot) and it not in dict(cat_b)


@pytest.mark.parametrize(
    ("event_type", "data", "reason"),
    [
        ("dev.knative.kafka.event", {"x": 1}, "does not handle"),
        ("dev.zerorec.task.rebuild-hot.v1", {}, "does not handle"),
        ("dev.zerorec.behavior.v1", {**click(), "kind": "zap"}, "$.kind"),
        ("dev.zerorec.behavior.v1", {**click(), "timestamp": "2999-01-01T00:00:00Z"}, "in the future"),
        ("dev.zerorec.item.upserted.v1", {"item_id": "i"}, "required property"),
    ],
)
def test_events_to_refuse_are_400_and_not_retried(app: Any, event_type: str, data: Any, reason: str) -> None:
    r = send(app, event_type, data)
    assert r.status_code == 400 and reason in r.json()["error"], r.text
    assert not is_retryable(r.status_code)  # the dispatcher dead-letters it without retries


def test_not_a_cloudevent_is_400(app: Any) -> None:
    r = call(app, "POST", "/", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not a CloudEvent" in r.json()["error"]
    assert call(app, "GET", "/health").status_code == 200


def test_kv_down_is_503_and_retried(make_app: Any) -> None:
    app = make_app(
        "consumer",
        ZEROREC_KV_STORE="redis",
        ZEROREC_REDIS_URL="redis://127.0.0.1:1/0",
        ZEROREC_CONNECT_TIMEOUT_S="0.5",
        ZEROREC_REQUEST_TIMEOUT_S="0.5",
    )
    r = send(app, "dev.zerorec.behavior.v1", click())
    assert r.status_code == 503 and "unavailable" in r.json()["error"]
    assert is_retryable(r.status_code)


def test_category_cache_is_dropped_by_item_events() -> None:
    kv = MemoryKVStore()
    applier = EventApplier(kv, category_cache_s=60)
    up = new_event("dev.zerorec.item.upserted.v1", item("i1", "old"), source="/t")
    applier.apply(up)
    applier.apply(new_event("dev.zerorec.behavior.v1", click("u1", "i1"), source="/t"))
    applier.apply(new_event("dev.zerorec.item.upserted.v1", item("i1", "new"), source="/t"))
    applier.apply(new_event("dev.zerorec.behavior.v1", click("u1", "i1"), source="/t"))
    assert user_state_from("u1", kv.read(user_state_reads("u1"))).category_affinity == {
        "old": 1.0,
        "new": 1.0,
    }


# ---------------------------------------------------------------- batched content mode


def send_batch(app: Any, entries: list[Any]) -> Any:
    return call(app, "POST", "/", headers={"content-type": BATCH}, content=orjson.dumps(entries))


def entry(event_type: str, data: Any, event_id: str) -> dict[str, Any]:
    event = new_event(event_type, data, source="/test", event_id=event_id)
    return {**event.get_attributes(), "data": data}


def test_batch_gives_one_result_per_event_and_applies_each_id_once(app: Any, namespace: str) -> None:
    user, it, ns = f"{namespace}u", f"{namespace}i", namespace
    send(app, "dev.zerorec.item.upserted.v1", item(it, "books"))
    assert send(app, "dev.zerorec.behavior.v1", click(user, it), event_id=f"{ns}-e0").status_code == 200
    entries = [
        entry("dev.zerorec.behavior.v1", click(user, it), f"{ns}-e0"),  # applied before, one at a time
        entry("dev.zerorec.behavior.v1", click(user, it), f"{ns}-e1"),
        entry("dev.zerorec.behavior.v1", {**click(user, it), "kind": "zap"}, f"{ns}-bad"),
        {"specversion": "1.0", "type": "dev.zerorec.behavior.v1", "source": "/t", "data": {}},  # no id
        entry("dev.zerorec.item.upserted.v1", item(it, "books", "music"), f"{ns}-up"),
        entry("dev.zerorec.behavior.v1", click(user, it), f"{ns}-e2"),  # sees the new category
        entry("dev.zerorec.behavior.v1", click(user, it), f"{ns}-e1"),  # the same id twice in a batch
        entry("dev.zerorec.task.rebuild-hot.v1", {}, f"{ns}-task"),
    ]
    r = send_batch(app, entries)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 200, 400, 400, 200, 200, 200, 400]
    assert [x.get("applied") for x in results] == [False, True, None, None, True, True, False, None]
    assert "$.kind" in results[2]["error"] and "'id'" in results[3]["error"]
    assert "does not handle" in results[7]["error"]
    cats = user_state_from(user, kv_store().read(user_state_reads(user))).category_affinity
    assert cats == {"books": 3.0, "music": 1.0}
    again = send_batch(app, entries)  # the whole batch redelivered: nothing counts twice
    assert [x.get("applied") for x in again.json()["results"]] == [False] * 2 + [None] * 2 + [False] * 3 + [
        None
    ]
    cats = user_state_from(user, kv_store().read(user_state_reads(user))).category_affinity
    assert cats == {"books": 3.0, "music": 1.0}


def test_batch_that_is_no_batch_is_400(app: Any) -> None:
    r = call(app, "POST", "/", headers={"content-type": BATCH}, content=b'{"id": "x"}')
    assert r.status_code == 400 and "JSON array" in r.json()["error"]
    r = call(app, "POST", "/", headers={"content-type": BATCH}, content=b"[")
    assert r.status_code == 400


def test_batch_with_kv_down_is_503(make_app: Any) -> None:
    app = make_app(
        "consumer",
        ZEROREC_KV_STORE="redis",
        ZEROREC_REDIS_URL="redis://127.0.0.1:1/0",
        ZEROREC_CONNECT_TIMEOUT_S="0.5",
        ZEROREC_REQUEST_TIMEOUT_S="0.5",
        ZEROREC_CONSUMER_CATEGORY_CACHE_S="0",
    )
    r = send_batch(app, [entry("dev.zerorec.behavior.v1", click(), "e1")])
    assert r.status_code == 503 and r.json()["results"][0]["status"] == 503


def test_health_reports_the_event_loop(app: Any) -> None:
    assert call(app, "GET", "/health").json()["loop"] in ("asyncio", "uvloop")


class _SlowKV(MemoryKVStore):
    """A KV whose every call takes `delay_s`, like a Redis that stalls."""

    delay_s = 1.0

    def read(self, ops: Any) -> list:
        time.sleep(self.delay_s)
        return super().read(ops)

    def write(self, ops: Any) -> None:
        time.sleep(self.delay_s)
        super().write(ops)

    def apply_once(self, token: Any, ops: Any, ttl_s: int = 7 * 24 * 3600) -> bool:
        time.sleep(self.delay_s)
        return super().apply_once(token, ops, ttl_s)

    def apply_many(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay_s)
        return super().apply_many(*args, **kwargs)


def test_a_slow_kv_does_not_stall_health(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the consumer applied events on its event loop, so one delivery waiting on a slow
    Redis held up every other request, `/health` included (Knative then kills the pod)."""
    import zerorec.storage

    monkeypatch.setattr(zerorec.storage, "kv_store", lambda *a, **k: _SlowKV())
    app = make_app("consumer", ZEROREC_CONSUMER_CATEGORY_CACHE_S="0")
    event = new_event("dev.zerorec.behavior.v1", click("slow-u", "slow-i"), source="/test")
    headers, body = to_http_binary(event)

    async def go() -> tuple[float, int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            started = time.monotonic()
            post = asyncio.create_task(client.post("/", headers=headers, content=body))
            await asyncio.sleep(0.05)  # the delivery is inside the KV call now
            health = await client.get("/health")
            took = time.monotonic() - started  # measured from before the delivery started
            return took, health.status_code, (await post).status_code

    took, health_status, post_status = asyncio.run(go())
    assert health_status == 200 and post_status == 200
    assert took < 0.5, f"/health answered {took:.2f} s after a delivery began waiting on a slow KV"
