"""functions/worker in-process on the embedded backends: catalogue import -> item stream -> KV,
rebuild-hot from the consumer's window counts, export-events to Parquet (committed after writing),
PingSource events."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import REPO, call, click
from zerorec import catalog
from zerorec.cloudevents_io import PING_EVENT_TYPE, from_kafka_record, new_event, to_http_binary
from zerorec.consumer import EventApplier
from zerorec.ingest import BehaviorIngest
from zerorec.realtime import hot_key, item_key
from zerorec.settings import get_settings
from zerorec.storage import event_bus, kv_store, object_store
from zerorec.storage.kv import HGetAll, ZTop


@pytest.fixture
def app(make_app: Any, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from zerorec import tasks

    monkeypatch.setattr(tasks, "IDLE_S", 0.2)  # the in-process bus answers at once
    monkeypatch.setattr(tasks, "FIRST_WAIT_S", 0.3)
    return make_app(
        "worker",
        ZEROREC_TOPIC_ITEMS=f"{namespace}.items",
        ZEROREC_TOPIC_BEHAVIOR=f"{namespace}.behavior",
        ZEROREC_EXPORT_GROUP=f"{namespace}-export",
    )


def task(app: Any, event_type: str, data: Any, *, ping: bool = False) -> Any:
    if ping:
        event = new_event(
            PING_EVENT_TYPE,
            data,
            source="/apis/v1/namespaces/zerorec/pingsources/x",
            extensions={"zerorectype": event_type},
        )
    else:
        event = new_event(event_type, data, source="/ops")
    headers, body = to_http_binary(event)
    return call(app, "POST", "/", headers=headers, content=body)


def apply_topic(topic: str, group: str) -> int:
    """Play the consumer: apply everything on `topic` to the KV."""
    consumer = event_bus().consumer([topic], group)
    applier = EventApplier(kv_store(), category_cache_s=0)
    records = consumer.poll(100_000, 0.05)
    for r in records:
        applier.apply(from_kafka_record(r))
    consumer.close()
    return len(records)


CSV = """item_id,title,categories,created_at,brand,price
i1,Dune,books|sci-fi,2024-05-01T12:00:00Z,ace,9.5
i2,,books,2024-05-02,penguin,
,Nameless,books,2024-05-02T00:00:00Z,x,1
i3,Bad date,books,yesterday,x,1
"""


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_catalogue_import_goes_through_the_item_stream(app: Any, namespace: str, fmt: str) -> None:
    key = f"{namespace}/catalogue.{fmt}"
    if fmt == "csv":
        blob = CSV.encode()
    else:
        frame = pd.read_csv(io.StringIO(CSV), dtype=str, keep_default_na=False)
        frame["categories"] = frame["categories"].str.split("|")
        sink = io.BytesIO()
        frame.to_parquet(sink)
        blob = sink.getvalue()
    object_store().put(key, blob)
    r = task(app, "dev.zerorec.task.catalogue-import.v1", {"key": key, "format": fmt})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["published"] == 2 and report["rejected"] == 2
    assert {x["index"] for x in report["reasons"]} == {2, 3}
    assert apply_topic(f"{namespace}.items", f"{namespace}-c") == 2
    i1, i2 = kv_store().read([HGetAll(item_key("i1")), HGetAll(item_key("i2"))])
    assert i1["categories"] == '["books", "sci-fi"]' and '"price": "9.5"' in i1["attributes"]
    assert i2["title"] == "i2" and float(i2["created_at"]) == pytest.approx(1714608000.0)


def test_catalogue_import_errors(app: Any, namespace: str) -> None:
    r = task(
        app, "dev.zerorec.task.catalogue-import.v1", {"key": f"{namespace}/missing.csv", "format": "csv"}
    )
    assert r.status_code == 422
    object_store().put(f"{namespace}/x.parquet", b"not parquet")
    r = task(
        app, "dev.zerorec.task.catalogue-import.v1", {"key": f"{namespace}/x.parquet", "format": "parquet"}
    )
    assert r.status_code == 400 and "Parquet" in r.json()["error"]
    r = task(app, "dev.zerorec.task.catalogue-import.v1", {"key": "../etc/passwd", "format": "csv"})
    assert r.status_code == 400


def _post_clicks(namespace: str, clicks: list[dict[str, Any]]) -> None:
    BehaviorIngest(event_bus(), f"{namespace}.behavior").accept_payloads(clicks)


def test_rebuild_hot_from_the_consumers_window_counts_as_a_ping(app: Any, namespace: str) -> None:
    bus = event_bus()
    catalog.publish_upserts(
        bus,
        f"{namespace}.items",
        [
            {
                "item_id": f"{namespace}a",
                "title": "A",
                "categories": [f"{namespace}c"],
                "created_at": "2024-01-01T00:00:00Z",
                "attributes": {},
            },
        ],
    )
    apply_topic(f"{namespace}.items", f"{namespace}-c")
    _post_clicks(
        namespace,
        [click("u1", f"{namespace}a")] * 3
        + [click("u2", f"{namespace}b")]
        + [{**click("u3", f"{namespace}old"), "timestamp": "2020-01-01T00:00:00Z"}],
    )
    apply_topic(f"{namespace}.behavior", f"{namespace}-b")  # the consumer counts as events arrive
    r = task(app, "dev.zerorec.task.rebuild-hot.v1", {"window_hours": 24, "n": 1}, ping=True)
    assert r.status_code == 200, r.text
    assert r.json()["buckets"] in (24, 25)
    hot, cat = kv_store().read([ZTop(hot_key(), 10), ZTop(hot_key(f"{namespace}c"), 10)])
    assert [m for m, _ in hot] == [f"{namespace}a"]  # top n=1, the stale item out of the window
    assert [m for m, _ in cat] == [f"{namespace}a"]
    r = task(app, "dev.zerorec.task.rebuild-hot.v1", {"window_hours": 24 * 365}, ping=True)
    assert r.status_code == 400 and "window_hours" in r.json()["error"]


def test_hot_lists_stay_right_past_any_log_size(
    app: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old rebuild re-read the topic from the earliest offset in a new consumer group each run
    and stopped at MAX_RECORDS: past that it saw only old events and emptied the lists. With a cap
    of 5 records and 40 old events before the new ones, the refresh still finds the new items,
    and it never asks the bus for a consumer."""
    from zerorec import tasks

    monkeypatch.setattr(tasks, "MAX_RECORDS", 5)
    old = [{**click(f"u{k}", f"{namespace}old{k}"), "timestamp": "2020-01-01T00:00:00Z"} for k in range(40)]
    _post_clicks(namespace, old + [click("u1", f"{namespace}new")] * 2 + [click("u2", f"{namespace}new2")])
    apply_topic(f"{namespace}.behavior", f"{namespace}-b")

    def no_consumer(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the hot-list refresh must not read the log")

    monkeypatch.setattr(type(event_bus()), "consumer", no_consumer)
    r = task(app, "dev.zerorec.task.rebuild-hot.v1", {"window_hours": 24, "n": 50})
    assert r.status_code == 200, r.text
    (hot,) = kv_store().read([ZTop(hot_key(), 1000)])
    mine = [m for m, _ in hot if m.startswith(namespace)]
    assert mine[:2] == [f"{namespace}new", f"{namespace}new2"] and len(mine) == 2


def test_export_events_writes_parquet_then_commits(app: Any, namespace: str) -> None:
    _post_clicks(namespace, [click(f"u{n}", f"i{n}") for n in range(5)])
    prefix = f"{namespace}/events"
    r = task(app, "dev.zerorec.task.export-events.v1", {"prefix": prefix}, ping=True)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["exported"] == 5 and report["backfill"] is False
    (key,) = report["objects"]
    assert key.startswith(prefix + "/") and key.endswith(".parquet")
    table = pq.read_table(io.BytesIO(object_store().get(key)))
    assert sorted(table.column("user_id").to_pylist()) == [f"u{n}" for n in range(5)]
    assert table.schema.field("timestamp").type.tz == "UTC"
    # committed: the next export has nothing new; a backfill re-reads the log
    assert task(app, "dev.zerorec.task.export-events.v1", {"prefix": prefix}).json()["exported"] == 0
    _post_clicks(namespace, [click("u9", "i9")])
    assert task(app, "dev.zerorec.task.export-events.v1", {"prefix": prefix}).json()["exported"] == 1
    back = task(app, "dev.zerorec.task.export-events.v1", {"prefix": prefix, "since": "2000-01-01T00:00:00Z"})
    assert back.json()["exported"] == 6 and back.json()["backfill"] is True


def test_invalid_task_events_are_400(app: Any) -> None:
    assert task(app, "dev.zerorec.task.rebuild-hot.v1", {"n": 0}).status_code == 400
    assert task(app, "dev.zerorec.behavior.v1", click()).status_code == 400
    plain_ping = new_event(PING_EVENT_TYPE, {}, source="/p")
    headers, body = to_http_binary(plain_ping)
    assert call(app, "POST", "/", headers=headers, content=body).status_code == 400
    assert get_settings().topic_items.endswith(".items")


def test_export_events_default_prefix_is_where_the_readers_look(app: Any, namespace: str) -> None:
    """Regression: the export's default prefix was `events` while training, feature engineering and
    vector generation read `exports/events` by default, so a PingSource export without data was lost."""
    _post_clicks(namespace, [click("u1", "i1")])
    r = task(app, "dev.zerorec.task.export-events.v1", {}, ping=True)
    assert r.status_code == 200, r.text
    (key,) = r.json()["objects"]
    assert key.startswith("exports/events/"), key
    for reader in ("jobs/feature_engineering/__main__.py", "jobs/vector_generation/__main__.py"):
        assert 'default="exports/events"' in (REPO / reader).read_text(encoding="utf-8"), reader


def test_rebuild_hot_takes_integral_floats(app: Any, namespace: str) -> None:
    """Regression (found by the fuzzer): JSON Schema's "integer" admits 5.0, and rebuild-hot sliced
    with it: a 500 instead of a rebuild."""
    _post_clicks(namespace, [click("u1", f"{namespace}a")])
    r = task(app, "dev.zerorec.task.rebuild-hot.v1", {"window_hours": 24.0, "n": 5.0})
    assert r.status_code == 200, r.text


def test_rebuild_hot_ignores_negative_feedback(app: Any, namespace: str) -> None:
    """Dislikes and hides are no popularity: many of them never make an item hot."""
    _post_clicks(
        namespace,
        [click("u1", f"{namespace}liked")]
        + [click(f"u{n}", f"{namespace}disliked", kind="dislike") for n in range(5)]
        + [click(f"u{n}", f"{namespace}hidden", kind="hide") for n in range(5)],
    )
    apply_topic(f"{namespace}.behavior", f"{namespace}-b")  # the consumer counts as events arrive
    r = task(app, "dev.zerorec.task.rebuild-hot.v1", {"window_hours": 24, "n": 1000})
    assert r.status_code == 200, r.text
    (hot,) = kv_store().read([ZTop(hot_key(), 1000)])
    assert [m for m, _ in hot if m.startswith(namespace)] == [f"{namespace}liked"]  # the list is shared
