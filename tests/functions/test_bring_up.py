"""A cluster that comes up from nothing: the serving functions before the first model is published.

Recall, ranking, reranking and user answer /health with 503 and a reason that says what is missing
and what brings it; item is Ready ('degraded'): it takes a catalogue on /admin/items and answers
lookups from the KV. Once a model is published every function loads it by itself (retries), with no
event and no restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fn_bundles import publish
from fn_stack import SERVING, Stack, Tiny, free_port, start_stack, stop_stack
from zerorec.cloudevents_io import from_kafka_record
from zerorec.consumer import EventApplier
from zerorec.settings import Settings
from zerorec.storage import event_bus, kv_store
from zerorec.storage.objects_local import LocalObjectStore

from local.functions import Service, ff, function_env

NEEDS_MODEL = [fn for fn in SERVING if fn != "item"]


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The five serving functions over an empty object store (no bucket content, no model)."""
    data = tmp_path_factory.mktemp("bring-up")
    env = function_env(
        False,
        data,
        {
            "ZEROREC_KV_STORE": "sqlite",
            "ZEROREC_EVENT_BUS": "sqlite",
            "ZEROREC_MODEL_RETRY_S": "0.5",
            "ZEROREC_TOPIC_ITEMS": "bring-up.items",
        },
    )
    services = [ff(name, free_port()) for name in SERVING]
    # "ready" for the stack means: answering /health at all (503 included)
    probes = [Service(s.name, s.port, s.argv, health=None) for s in services]
    stack = start_stack(probes, env, data / "logs")
    stack.env["DATA"] = str(data)
    yield stack
    stop_stack(stack)


def _settings(stack: Stack) -> Settings:
    return Settings(data_dir=Path(stack.env["DATA"]), kv_store="sqlite", event_bus="sqlite")


def _health(stack: Stack, fn: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(stack.urls[fn] + "/health", timeout=5)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_before_the_first_model(empty: Stack) -> None:
    objects = str(Path(empty.env["DATA"]) / "objects")
    for fn in NEEDS_MODEL:
        r = _health(empty, fn)
        assert r.status_code == 503, (fn, r.text)
        body = r.json()
        assert body["status"] == "loading" and body["model_version"] is None
        assert "models/recommender/LATEST" in body["reason"] and objects in body["reason"], body
        assert "init-cluster" in body["reason"] and "retrying" in body["reason"]
    r = httpx.post(empty.urls["recall"] + "/", json={"user_id": "u1", "n": 5})
    assert r.status_code == 503 and "LATEST" in r.json()["error"]
    item = _health(empty, "item")
    assert item.status_code == 200, "item is Ready without a model: Knative routes /admin/items to it"
    assert item.json()["status"] == "degraded" and "init-cluster" in item.json()["reason"]

    # a catalogue before any model: produced to the items topic, applied by the consumer, looked up
    upsert = {
        "item_id": "first-1",
        "title": "First",
        "categories": ["drama"],
        "attributes": {},
        "created_at": "2024-05-01T12:00:00Z",
    }
    r = httpx.post(empty.urls["item"] + "/admin/items", json={"upsert": [upsert]}, timeout=10)
    assert r.status_code == 202 and r.json()["upserted"]["published"] == 1, r.text
    s = _settings(empty)
    consumer = event_bus(s).consumer(["bring-up.items"], "bring-up")
    try:
        records = consumer.poll(100, 2.0)
    finally:
        consumer.close()
    assert len(records) == 1
    EventApplier(kv_store(s)).apply(from_kafka_record(records[0]))
    r = httpx.post(empty.urls["item"] + "/", json={"item_ids": ["first-1", "unknown"]}, timeout=10)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert set(items) == {"first-1"} and items["first-1"]["title"] == "First"
    assert items["first-1"]["categories"] == ["drama"]


def test_the_first_published_model_is_picked_up_without_a_restart(empty: Stack, tiny: Tiny) -> None:
    version = publish(LocalObjectStore(Path(empty.env["DATA"]) / "objects"), "recommender", tiny.files)
    deadline = time.monotonic() + 60
    pending = set(SERVING)
    while pending and time.monotonic() < deadline:
        for fn in list(pending):
            r = _health(empty, fn)
            if r.status_code == 200 and r.json()["model_version"] == version:
                pending.discard(fn)
        time.sleep(0.2)
    assert not pending, {fn: _health(empty, fn).text for fn in pending}
    assert _health(empty, "item").json()["status"] == "ok"
    r = httpx.post(empty.urls["recall"] + "/", json={"user_id": "u1", "n": 5})
    assert r.status_code == 200 and r.json()["model_version"] == version
    # the KV's catalogue entry still wins over the bundle, the bundle fills in the rest
    known = tiny.items.item_id.tolist()[0]
    items = httpx.post(empty.urls["item"] + "/", json={"item_ids": ["first-1", known]}).json()["items"]
    assert items["first-1"]["title"] == "First" and known in items
