"""Vector generation: the published bundle's index finds the nearest items of a known embedding."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from zerorec.bundle import latest_version, load_bundle, publish_bundle
from zerorec.cloudevents_io import from_kafka_record, validate
from zerorec.errors import NotFoundError
from zerorec.recall.channels import ALSChannel
from zerorec.storage.bus_memory import MemoryEventBus
from zerorec.storage.objects_local import LocalObjectStore
from zerorec.tasks import EXPORT_SCHEMA

from jobs.vector_generation.job import (
    MODEL_PUBLISHED,
    ItemVectors,
    load_vectors,
    models_topic,
    nearest,
    run_vectors,
)


def _cosine_top(emb: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    return np.argsort(-scores, kind="stable")[:k].tolist()


def test_known_embeddings_give_their_nearest_items_and_an_event(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 16)).astype(np.float32)
    ids = [f"item-{i}" for i in range(200)]
    objects, bus = LocalObjectStore(tmp_path), MemoryEventBus()
    consumer = bus.consumer([models_topic()], "test", from_beginning=True)
    report = run_vectors(objects, bus, name="vectors", vectors=ItemVectors(ids, emb, {"source": "test"}))
    assert report["items"] == 200 and report["dim"] == 16
    assert latest_version(objects, "vectors") == report["version"]

    loaded = load_vectors(objects, "vectors")
    query = emb[42] + 0.01 * rng.normal(size=16).astype(np.float32)
    got = nearest(loaded, query, k=5)
    assert got[0][0] == "item-42" and got[0][1] == pytest.approx(1.0, abs=1e-3)
    assert [i for i, _ in got] == [ids[r] for r in _cosine_top(emb, query, 5)]

    records = consumer.poll(10, 1.0)
    assert len(records) == 1
    event = from_kafka_record(records[0])
    validate(event)
    assert event["type"] == MODEL_PUBLISHED and records[0].key == b"vectors"
    data = event.get_data()
    assert data["name"] == "vectors" and data["version"] == report["version"]
    assert objects.exists(data["manifest_key"])


def test_from_a_recommender_bundle_uses_its_als_factors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    als = ALSChannel(factors=8)
    als.model.user_factors = rng.normal(size=(5, 8)).astype(np.float32)
    als.model.item_factors = rng.normal(size=(30, 8)).astype(np.float32)
    als.n_items, als.default_now = 30, 1.7e9
    ids = [f"m{i}" for i in range(30)]
    files = {f"channels/als/{k}": v for k, v in als.to_files().items()}
    files["meta.json"] = ('{"item_ids": ' + str(ids).replace("'", '"') + "}").encode()
    objects = LocalObjectStore(tmp_path)
    model_version = publish_bundle(objects, "recommender", files)
    report = run_vectors(objects, None, source="bundle", model="recommender")
    assert report["origin"] == {
        "source": "bundle",
        "model": "recommender",
        "model_version": model_version,
        "channel": "als",
    }
    assert load_bundle(objects, "vectors").params["model_version"] == model_version
    factors = als.model.item_factors
    got = nearest(load_vectors(objects), factors[7], k=3)
    assert [i for i, _ in got] == [ids[r] for r in _cosine_top(factors, factors[7], 3)]


def test_from_the_export_fits_als(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    now = datetime(2024, 6, 1, tzinfo=UTC)
    rows = [
        {
            "event_id": f"e{n}",
            "source": "/zerorec/behavior",
            "user_id": f"u{u}",
            "item_id": f"i{(u % 4) * 10 + int(rng.integers(0, 10))}",  # 4 taste groups of 10 items
            "kind": "click",
            "timestamp": now - timedelta(minutes=n),
            "value": None,
            "context": None,
            "topic": "zerorec.behavior",
            "partition": 0,
            "offset": n,
        }
        for n, u in enumerate(rng.integers(0, 40, 1500).tolist())
    ]
    objects = LocalObjectStore(tmp_path)
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA), sink)
    objects.put("exports/events/2024-06-01/part-x.parquet", sink.getvalue())
    report = run_vectors(objects, None, source="events", events_prefix="exports/events", factors=8)
    assert report["items"] == 40 and report["origin"]["events"] == 1500
    item_ids, channel = load_vectors(objects)
    # an item's neighbours are mostly from its own taste group
    vec = channel.embeddings[item_ids.index("i3")]
    group = {f"i{k}" for k in range(10)}
    top = [i for i, _ in nearest((item_ids, channel), vec, k=6)]
    assert len(group & set(top)) >= 5  # (group members are near-duplicates of i3: ties)
    with pytest.raises(NotFoundError):
        run_vectors(objects, None, source="events", events_prefix="nothing/here")
