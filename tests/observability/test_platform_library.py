"""zerorec.platform_api without processes: catalogue bulk import -> items topic -> consumer -> KV
-> export (JSON lines and Parquet), and the request checks."""

from __future__ import annotations

import io

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from zerorec.cloudevents_io import from_kafka_record
from zerorec.consumer import EventApplier
from zerorec.errors import InvalidInputError
from zerorec.platform_api import (
    JSONL,
    PARQUET,
    catalogue_items,
    import_items,
    jsonl_chunks,
    merge_openapi,
    parquet_bytes,
    read_rows,
)
from zerorec.storage.bus_memory import MemoryEventBus
from zerorec.storage.kv_memory import MemoryKVStore

ROWS = [
    {"item_id": f"plat-{k}", "title": f"Item {k}", "categories": ["books" if k % 2 else "music"],
     "created_at": f"2026-01-0{k + 1}T00:00:00Z", "attributes": {"price": k}}
    for k in range(5)
]  # fmt: skip


def _apply_topic(bus: MemoryEventBus, kv: MemoryKVStore) -> int:
    consumer = bus.consumer(["items"], "test-apply")
    applier = EventApplier(kv)
    records = consumer.poll(1000, 0.1)
    for record in records:
        applier.apply(from_kafka_record(record))
    return len(records)


def _jsonl(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def test_import_then_export_round_trip_in_jsonl_and_parquet() -> None:
    bus, kv = MemoryEventBus(), MemoryKVStore()
    bus.ensure_topics(["items"])
    bad = {"item_id": "", "title": "no id"}
    report = import_items(bus, "items", _jsonl([*ROWS, bad]), JSONL)
    assert report["rows"] == 6 and report["published"] == 5 and report["rejected"] == 1
    assert _apply_topic(bus, kv) == 5

    exported = list(catalogue_items(None, kv))
    assert sorted(r["item_id"] for r in exported) == [r["item_id"] for r in ROWS]
    by_id = {r["item_id"]: r for r in exported}
    assert by_id["plat-3"]["categories"] == ["books"] and by_id["plat-3"]["attributes"] == {"price": 3}
    assert by_id["plat-3"]["created_at"] == "2026-01-04T00:00:00Z"

    lines = b"".join(jsonl_chunks(exported, per_chunk=2)).splitlines()
    assert [orjson.loads(x) for x in lines] == exported
    table = pq.read_table(io.BytesIO(parquet_bytes(exported, per_group=2)))
    assert table.num_rows == 5 and table.column_names[:3] == ["item_id", "title", "categories"]

    # The Parquet export imports back as is (attributes as a JSON string column are decoded).
    again = read_rows(parquet_bytes(exported), PARQUET)
    assert [r["item_id"] for r in again] == [r["item_id"] for r in exported]
    report2 = import_items(bus, "items", parquet_bytes(exported), PARQUET)
    assert report2["published"] == 5, report2
    assert list(catalogue_items(None, kv, limit=2)).__len__() == 2


def test_deleted_items_are_not_exported() -> None:
    bus, kv = MemoryEventBus(), MemoryKVStore()
    bus.ensure_topics(["items"])
    import_items(bus, "items", _jsonl(ROWS[:2]), JSONL)
    from zerorec.catalog import publish_deletes

    publish_deletes(bus, "items", ["plat-0"])
    _apply_topic(bus, kv)
    assert [r["item_id"] for r in catalogue_items(None, kv)] == ["plat-1"]


@pytest.mark.parametrize(
    ("body", "ctype", "reason"),
    [
        (b"{not json}\n", JSONL, "line 1: not JSON"),
        (b"[1, 2]\n", JSONL, "line 1: not a JSON object"),
        (b"PAR1 garbage", PARQUET, "not a Parquet file"),
        (b"a,b\n", "text/csv", "content-type must be"),
    ],
)
def test_bad_import_bodies_are_clear_errors(body: bytes, ctype: str, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        read_rows(body, ctype)


def test_parquet_import_of_a_table_with_list_categories() -> None:
    table = pa.table(
        {"item_id": ["p1"], "title": ["T"], "categories": [["a", "b"]], "created_at": ["2026-02-01"]}
    )
    out = io.BytesIO()
    pq.write_table(table, out)
    bus, kv = MemoryEventBus(), MemoryKVStore()
    bus.ensure_topics(["items"])
    assert import_items(bus, "items", out.getvalue(), PARQUET)["published"] == 1
    _apply_topic(bus, kv)
    (row,) = catalogue_items(None, kv)
    assert row["categories"] == ["a", "b"]


def test_openapi_documents_name_every_new_route() -> None:
    base = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/": {}}}
    for function, paths in {
        "recall": {"/similar-items", "/latest"},
        "user": {"/similar-users", *(f"/admin/users{op}" for op in ("", "/get", "/delete", "/export"))},
        "item": {"/admin/items/import", "/admin/items/export"},
        "recommender": {"/similar-items", "/similar-users", "/latest", "/popular"},
    }.items():
        doc = merge_openapi(base, function)
        assert paths | {"/"} == set(doc["paths"]), function
        for path in paths:
            for ref in _refs(doc["paths"][path]):
                assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], (function, ref)


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []
