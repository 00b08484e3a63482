"""Vectors feed recall: vector-generation publishes a bundle and announces it on the models topic;
the announcement (what the KafkaSource models-to-recall delivers) makes recall search those vectors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fn_bundles import publish
from fn_stack import Stack, Tiny, free_port, start_stack, stop_stack
from zerorec.cloudevents_io import from_kafka_record, new_event, to_http_binary
from zerorec.recall.channels import VectorChannel
from zerorec.recall.published_vectors import PublishedVectors, aligned_channel
from zerorec.storage.bus_memory import MemoryEventBus
from zerorec.storage.objects_local import LocalObjectStore

from jobs.vector_generation.job import MODEL_PUBLISHED, ItemVectors, run_vectors
from local.functions import ff, function_env

DIM = 16


def _channel(emb: np.ndarray) -> VectorChannel:
    ch = VectorChannel(factors=emb.shape[1])
    ch.embeddings16 = emb.astype(np.float16)
    ch.n_items, ch.default_now = len(emb), 0.0
    return ch


def test_aligned_channel_matches_rows_by_item_id() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 4)).astype(np.float32)
    vectors = PublishedVectors("vectors", "v1", ["c", "a", "x"], _channel(emb))  # other order, extra x
    own = _channel(np.zeros((3, 4), np.float32))
    own.recent, own.default_now = 7, 123.0
    ch = aligned_channel(vectors, ["a", "b", "c"], own)  # b unknown to the vectors
    assert np.array_equal(ch.embeddings16[0], emb[1].astype(np.float16))
    assert not ch.embeddings16[1].any()
    assert np.array_equal(ch.embeddings16[2], emb[0].astype(np.float16))
    assert ch.recent == 7 and ch.default_now == 123.0 and ch.n_items == 3
    assert ch.item_index.index.ntotal == 3
    same = aligned_channel(vectors, ["c", "a", "x"], own)  # same vocabulary: the published index
    assert same.embeddings16 is vectors.channel.embeddings16


@pytest.fixture
def recall_only(tiny: Tiny, tmp_path: Path) -> Iterator[Stack]:
    """recall alone, on a model of its own objects dir (the session stack's recall stays as it is)."""
    publish(LocalObjectStore(tmp_path / "objects"), "recommender", tiny.files)
    env = function_env(
        False,
        tmp_path,
        {
            "ZEROREC_KV_STORE": "memory",
            "ZEROREC_EVENT_BUS": "memory",
            "ZEROREC_MODEL_NAME": "recommender",
            "ZEROREC_MODEL_POLL_S": "0",  # only the event may bring the vectors in
        },
    )
    stack = start_stack([ff("recall", free_port())], env, tmp_path / "logs")
    stack.env["OBJECTS"] = str(tmp_path / "objects")
    yield stack
    stop_stack(stack)


def _vector_scores(stack: Stack, recent: str) -> dict[str, float]:
    body = {"user_id": "someone-new", "recent_items": [recent], "n": 200}
    r = httpx.post(stack.urls["recall"] + "/", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return {
        c["item_id"]: c["channel_scores"]["vector"]
        for c in r.json()["candidates"]
        if "vector" in c["channel_scores"]
    }


def test_a_published_vector_bundle_is_what_recall_searches(recall_only: Stack, tiny: Tiny) -> None:
    item_ids = [str(i) for i in json.loads(tiny.files["meta.json"])["item_ids"]]
    history, target = item_ids[0], item_ids[1]
    before = _vector_scores(recall_only, history)
    assert before, "the model's own vector channel answers first"

    # vectors in which `target` is the history item's twin: only these vectors make it the nearest
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(len(item_ids), DIM)).astype(np.float32)
    emb[1] = emb[0] + 0.01 * rng.normal(size=DIM)
    order = np.arange(len(item_ids))[::-1]  # published in another row order than the model's
    vectors = ItemVectors([item_ids[k] for k in order], emb[order], {"source": "test"})
    bus = MemoryEventBus()
    store = LocalObjectStore(Path(recall_only.env["OBJECTS"]))
    report = run_vectors(store, bus, vectors=vectors)

    # the KafkaSource's part: the record on the models topic, as a binary CloudEvent, to recall
    consumer = bus.consumer([report["topic"]], "models-to-recall", from_beginning=True)
    (record,) = consumer.poll(10, 1.0)
    headers, body = to_http_binary(from_kafka_record(record))
    url = recall_only.urls["recall"] + "/events/vectors-published"
    r = httpx.post(url, content=body, headers=headers, timeout=10)
    assert r.status_code == 202, r.text

    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = {
        item_ids[k]: float(unit[k].astype(np.float16).astype(np.float32) @ unit[0])
        for k in range(len(item_ids))
    }
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = _vector_scores(recall_only, history)
        if max(after, key=after.get) == target:
            break
        time.sleep(0.2)
    assert max(after, key=after.get) == target, recall_only.log("recall")[-2000:]
    assert max(before, key=before.get) != target  # the model's own vectors did not say so
    for item, score in after.items():
        assert score == pytest.approx(want[item], abs=2e-2), item
    assert f"vectors/{report['version']}" in recall_only.log("recall")

    # a model.published for another bundle is refused there, and changes nothing
    other = new_event(MODEL_PUBLISHED, {"name": "recommender", "version": "v9"}, source="/t")
    headers, body = to_http_binary(other)
    assert httpx.post(url, content=body, headers=headers, timeout=10).status_code == 422
