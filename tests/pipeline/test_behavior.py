"""functions/behavior in-process on the embedded bus: batches, per-event reasons, limits, API key,
CloudEvent input, and a bus that does not acknowledge (503, nothing reported as accepted)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pipeline_helpers import call, click
from zerorec.cloudevents_io import from_kafka_record, new_event, to_http_binary, to_http_structured
from zerorec.errors import DeliveryError
from zerorec.ingest import BehaviorIngest, parse_batch
from zerorec.storage import event_bus
from zerorec.storage.bus_memory import MemoryEventBus

TOPIC = "zerorec.behavior"


def produced(group: str) -> list[Any]:
    consumer = event_bus().consumer([TOPIC], group)
    try:
        return [from_kafka_record(r) for r in consumer.poll(10_000, 0.05)]
    finally:
        consumer.close()


@pytest.fixture
def app(make_app: Any) -> Any:
    return make_app("behavior", ZEROREC_TOPIC_BEHAVIOR=TOPIC)


@pytest.mark.parametrize("shape", ["array", "wrapped", "single"])
def test_batch_shapes_are_produced_keyed_by_user_after_ack(app: Any, shape: str, namespace: str) -> None:
    events = [click(f"{namespace}-u{n}", f"i{n}") for n in range(3)]
    body = {"array": events, "wrapped": {"events": events}, "single": events[0]}[shape]
    before = len(produced(namespace + "a"))
    r = call(app, "POST", "/events", json=body)
    assert r.status_code == 202, r.text
    doc = r.json()
    n = 1 if shape == "single" else 3
    assert doc["accepted"] == n and doc["rejected"] == 0 and len(doc["ids"]) == n
    records = produced(namespace + "b")[before:]
    assert [e["id"] for e in records] == doc["ids"]
    assert all(
        e["type"] == "dev.zerorec.behavior.v1" and e["subject"] == e.get_data()["user_id"] for e in records
    )


def test_mixed_batch_reports_each_rejection_and_produces_only_valid(app: Any) -> None:
    good = click("u-mixed", "i1")
    bad = [
        {**click(), "user_id": 7},  # wrong type
        {**click(), "kind": "teleport"},  # unknown kind
        {**click(), "timestamp": "2999-01-01T00:00:00Z"},  # future
        {**click(), "timestamp": "1990-01-01T00:00:00Z"},  # ancient
        {**click(), "timestamp": 1714564800000},  # epoch ms
        click(kind="rating"),  # rating without value
        {**click(), "value": 3},  # value on a click
        {**click(), "extra": 1},  # unknown field
        "not an object",
    ]
    r = call(app, "POST", "/events", json=[good, *bad])
    assert r.status_code == 202, r.text
    doc = r.json()
    assert doc["accepted"] == 1 and doc["rejected"] == len(bad)
    assert doc["ids"][0] is not None and doc["ids"][1:] == [None] * len(bad)
    reasons = {e["index"]: e["reason"] for e in doc["errors"]}
    assert "$.user_id" in reasons[1] and "string" in reasons[1]
    assert "teleport" in reasons[2] or "$.kind" in reasons[2]
    assert "in the future" in reasons[3]
    assert "too old" in reasons[4]
    assert "$.timestamp" in reasons[5]
    assert "required when kind is 'rating'" in reasons[6]
    assert "only allowed when kind is 'rating'" in reasons[7]
    assert "extra" in reasons[8]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"{not json", "not valid JSON"),
        (b"[]", "no events"),
        (b'{"events": 3}', "must be a JSON array"),
        (json.dumps([{"kind": "zap"}]).encode(), "no valid event"),
    ],
)
def test_bad_bodies_are_400_with_a_reason(app: Any, body: bytes, reason: str) -> None:
    r = call(app, "POST", "/events", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and reason in r.json()["error"], r.text


def test_limits_batch_length_and_body_size(make_app: Any) -> None:
    app = make_app("behavior", ZEROREC_BEHAVIOR_MAX_BATCH="5", ZEROREC_BEHAVIOR_MAX_BODY_BYTES="4096")
    r = call(app, "POST", "/events", json=[click() for _ in range(6)])
    assert r.status_code == 413 and "over the limit of 5" in r.json()["error"]
    r = call(
        app, "POST", "/events", json=[{**click(), "context": {"k": "x" * 200}}] * 5 + [{"pad": "y" * 4000}]
    )
    assert r.status_code == 413 and "larger than 4096" in r.json()["error"]


def test_api_key(make_app: Any) -> None:
    app = make_app("behavior", ZEROREC_BEHAVIOR_API_KEY="s3cret")
    assert call(app, "POST", "/events", json=click()).status_code == 401
    assert call(app, "POST", "/events", json=click(), headers={"X-API-Key": "nope"}).status_code == 401
    assert call(app, "POST", "/events", json=click(), headers={"X-API-Key": "s3cret"}).status_code == 202
    assert call(app, "GET", "/health").status_code == 200


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_cloudevent_input_keeps_its_id(app: Any, mode: str, namespace: str) -> None:
    event = new_event(
        "dev.zerorec.behavior.v1", click(namespace), source="/shop/web", event_id=f"{namespace}-1"
    )
    headers, body = (to_http_binary if mode == "binary" else to_http_structured)(event)
    r = call(app, "POST", "/events", headers=headers, content=body)
    assert r.status_code == 202 and r.json()["ids"] == [f"{namespace}-1"], r.text
    (got,) = [e for e in produced(namespace) if e["id"] == f"{namespace}-1"]
    assert got["source"] == "/shop/web" and got.get_data()["user_id"] == namespace


def test_cloudevent_of_another_type_or_bad_data_is_400(app: Any) -> None:
    item = {
        "item_id": "i1",
        "title": "t",
        "categories": [],
        "created_at": "2024-01-01T00:00:00Z",
        "attributes": {},
    }
    headers, body = to_http_binary(new_event("dev.zerorec.item.upserted.v1", item, source="/x"))
    r = call(app, "POST", "/events", headers=headers, content=body)
    assert r.status_code == 400 and "takes dev.zerorec.behavior.v1" in r.json()["error"]
    headers, body = to_http_binary(
        new_event("dev.zerorec.behavior.v1", {**click(), "kind": "x"}, source="/x")
    )
    assert call(app, "POST", "/events", headers=headers, content=body).status_code == 400


def test_routes_and_methods(app: Any) -> None:
    assert call(app, "GET", "/events").status_code == 405
    assert call(app, "POST", "/nope", json=click()).status_code == 404


class _NoAckBus(MemoryEventBus):
    def publish(self, topic: str, records: Any) -> None:
        raise DeliveryError("kafka at 127.0.0.1:1: 3 of 3 records not acknowledged")


def test_unacknowledged_publish_is_503_and_nothing_accepted(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Patch the bus class the app was built on (the embedded memory bus), not a module found by
    # scanning sys.modules: a full run holds stale copies of functions/behavior/main.py.
    calls: list[int] = []

    def no_ack(self: MemoryEventBus, topic: str, records: Any) -> None:
        calls.append(len(records))
        raise DeliveryError("kafka at 127.0.0.1:1: 2 of 2 records not acknowledged")

    monkeypatch.setattr(MemoryEventBus, "publish", no_ack)
    r = call(app, "POST", "/events", json=[click(), click()])
    assert r.status_code == 503 and "nothing acknowledged" in r.json()["error"]
    assert calls == [2]  # the app's own bus was asked, and refused


def test_parse_batch_rejects_scalars_per_event() -> None:
    assert parse_batch(b"[1, 2]") == [1, 2]
    result = BehaviorIngest(MemoryEventBus(), TOPIC).accept_payloads([1, click()])
    assert result.accepted == 1 and result.errors[0]["index"] == 0


def test_event_ids_derive_from_the_request_so_a_retry_is_deduplicated() -> None:
    from zerorec.ingest import behavior_event_ids

    a, b = click("u1", "i1"), click("u1", "i2")
    reordered_keys = [dict(reversed(list(a.items()))), b]
    ids = behavior_event_ids([a, b])
    assert behavior_event_ids([a, b]) == ids  # a resent request: same ids
    assert behavior_event_ids(reordered_keys) == ids  # key order does not matter
    assert len(set(behavior_event_ids([a, a]))) == 2  # two identical events stay two
    assert behavior_event_ids([b, a])[0] not in ids  # another request: other ids
