"""functions/behavior's bulk import (`POST /events/import`) in-process on the embedded bus: JSON lines
and Parquet (the worker's export format) produced like /events batches, `event_id`s kept, the same
import re-posted gives the same ids, per-row reasons, limits, the API key and an unacknowledged bus."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import call, click
from zerorec.cloudevents_io import from_kafka_record
from zerorec.errors import DeliveryError
from zerorec.ingest import IMPORT_MAX_BODY_BYTES, IMPORT_MAX_EVENTS
from zerorec.platform_api import JSONL, PARQUET
from zerorec.storage import event_bus
from zerorec.storage.bus_memory import MemoryEventBus
from zerorec.tasks import EXPORT_SCHEMA

TOPIC = "zerorec.behavior.import"


def produced(group: str) -> list[Any]:
    consumer = event_bus().consumer([TOPIC], group)
    try:
        return [from_kafka_record(r) for r in consumer.poll(100_000, 0.05)]
    finally:
        consumer.close()


@pytest.fixture
def app(make_app: Any) -> Any:
    return make_app("behavior", ZEROREC_TOPIC_BEHAVIOR=TOPIC, ZEROREC_BEHAVIOR_MAX_BATCH="10")


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in rows) + b"\n"


def post_import(app: Any, body: bytes, ctype: str = JSONL, **headers: str) -> Any:
    return call(app, "POST", "/events/import", content=body, headers={"content-type": ctype, **headers})


def test_jsonl_import_is_produced_in_batches_with_stable_ids(app: Any, namespace: str) -> None:
    rows = [click(f"{namespace}-u{k % 7}", f"i{k}") for k in range(25)]  # 3 publishes of max_batch 10
    rows[3] = {**rows[3], "kind": "teleport"}
    before = len(produced(namespace + "a"))
    r = post_import(app, jsonl(rows))
    assert r.status_code == 202, r.text
    doc = r.json()
    assert doc["accepted"] == 24 and doc["rejected"] == 1 and doc["errors"][0]["index"] == 3
    records = produced(namespace + "b")[before:]
    assert [e["id"] for e in records] == [i for i in doc["ids"] if i]
    assert [e.get_data()["item_id"] for e in records] == [r["item_id"] for k, r in enumerate(rows) if k != 3]
    # the same import again: the same ids (the consumer applies each once)
    assert post_import(app, jsonl(rows)).json()["ids"] == doc["ids"]
    assert len(set(doc["ids"]) - {None}) == 24  # equal rows in one import stay distinct events


def test_the_workers_parquet_export_imports_with_its_event_ids(app: Any, namespace: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    exported = [
        {"event_id": f"{namespace}-e1", "source": "/zerorec/behavior", "user_id": f"{namespace}-u",
         "item_id": "i1", "kind": "click", "timestamp": now, "value": None,
         "context": '{"device": "ios"}', "topic": "zerorec.behavior", "partition": 0, "offset": 7},
        {"event_id": f"{namespace}-e2", "source": "/zerorec/behavior", "user_id": f"{namespace}-u",
         "item_id": "i2", "kind": "rating", "timestamp": now, "value": 4.5, "context": None,
         "topic": "zerorec.behavior", "partition": 0, "offset": 8},
    ]  # fmt: skip
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(exported, schema=EXPORT_SCHEMA), sink)
    before = len(produced(namespace + "a"))
    r = post_import(app, sink.getvalue(), PARQUET)
    assert r.status_code == 202, r.text
    assert r.json()["ids"] == [f"{namespace}-e1", f"{namespace}-e2"]
    records = produced(namespace + "b")[before:]
    assert [e["id"] for e in records] == [f"{namespace}-e1", f"{namespace}-e2"]
    first, second = (e.get_data() for e in records)
    assert first["context"] == {"device": "ios"} and "value" not in first
    assert second["value"] == 4.5 and second["timestamp"].endswith("Z")


def test_bad_imports_are_4xx_with_reasons(app: Any, make_app: Any) -> None:
    good = click("u-bad", "i1")
    cases = [
        (b"{not json\n", JSONL, 400),
        (b"[1, 2]\n", JSONL, 400),  # a line that is not an object
        (b"PAR1 garbage", PARQUET, 400),
        (jsonl([good]), "text/csv", 400),
        (b"\n\n", JSONL, 400),  # no event
        (jsonl([{**click(), "user_id": 7}]), JSONL, 400),  # no valid event
        (jsonl([{**good, "event_id": "x" * 129}]), JSONL, 400),
        (jsonl([good] * (IMPORT_MAX_EVENTS + 1)), JSONL, 413),
        (b" " * (IMPORT_MAX_BODY_BYTES + 1), JSONL, 413),
    ]
    for body, ctype, status in cases:
        r = post_import(app, body, ctype)
        assert r.status_code == status and r.json()["error"], (body[:40], r.text)
    assert call(app, "GET", "/events/import").status_code == 405

    keyed = make_app("behavior", ZEROREC_TOPIC_BEHAVIOR=TOPIC, ZEROREC_BEHAVIOR_API_KEY="k")
    assert post_import(keyed, jsonl([good])).status_code == 401
    assert post_import(keyed, jsonl([good]), **{"x-api-key": "k"}).status_code == 202


def test_unacknowledged_import_is_503(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: MemoryEventBus, topic: str, records: Any) -> None:
        raise DeliveryError("broker did not acknowledge")

    monkeypatch.setattr(MemoryEventBus, "publish", refuse)
    r = post_import(app, jsonl([click("u-503", "i1")]))
    assert r.status_code == 503 and "retrying" in r.json()["error"]


def test_the_route_is_in_the_openapi_document(app: Any) -> None:
    op = call(app, "GET", "/openapi.json").json()["paths"]["/events/import"]["post"]
    assert set(op["requestBody"]["content"]) == {JSONL, PARQUET} and "202" in op["responses"]
