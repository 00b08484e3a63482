"""Vector generation: item embeddings -> a faiss index, published as its own bundle, announced.

Embeddings come from the current model bundle (`source="bundle"`: the ALS channel's item factors,
else the vector channel's embeddings) or from the exported behavior Parquet (`source="events"`:
ALS fitted here with the same `ALSChannel`). The index is the recall code's `VectorChannel`
(faiss inner product over L2-normalised vectors), so the bundle loads with `load_vectors` and
searches exactly as the recall function's vector channel does.

Bundle `<name>` (default "vectors"): `channels/vector/{params.json,index.faiss}` (VectorChannel files)
and `item_ids.json` (row i of the index is item_ids[i]). Then a `dev.zerorec.model.published.v1`
event goes to the bus topic `ZEROREC_TOPIC_MODELS` (default `zerorec.models`), key = bundle name;
the KafkaSource `models-to-recall` (knative/eventing/kafka-sources.yaml) delivers it to recall,
which reloads the vectors and searches them as its vector channel.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from zerorec.bundle import load_bundle, publish_bundle
from zerorec.cloudevents_io import CloudEvent, new_event, to_kafka_record, validate
from zerorec.data.interactions import InteractionData, normalize_interactions
from zerorec.errors import InvalidInputError, NotFoundError
from zerorec.realtime import event_weight
from zerorec.recall.channels import ALSChannel, VectorChannel
from zerorec.recall.published_vectors import VECTORS_PREFIX, load_published_vectors
from zerorec.storage.bus import EventBus
from zerorec.storage.objects import ObjectStore

VECTOR_GENERATION = "dev.zerorec.task.vector-generation.v1"
MODEL_PUBLISHED = "dev.zerorec.model.published.v1"
SOURCE = "/zerorec/vector-generation"
DEFAULT_NAME = "vectors"
CHANNEL_PREFIX = VECTORS_PREFIX  # what recall reads


def models_topic() -> str:
    """Where model.published events go."""
    return os.environ.get("ZEROREC_TOPIC_MODELS", "zerorec.models")


@dataclass(frozen=True)
class ItemVectors:
    """Embeddings (rows) of `item_ids`, and where they came from."""

    item_ids: list[str]
    embeddings: np.ndarray
    origin: dict[str, Any]
    default_now: float = 0.0


def _sub(files: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    return {k[len(prefix) :]: v for k, v in files.items() if k.startswith(prefix)}


def vectors_from_bundle(objects: ObjectStore, model: str, version: str = "latest") -> ItemVectors:
    """The ALS item factors (else the vector channel's embeddings) of a published recommender bundle."""
    bundle = load_bundle(objects, model, version)
    item_ids = [str(i) for i in bundle.json("meta.json")["item_ids"]]
    als = _sub(bundle.files, "channels/als/")
    vec = _sub(bundle.files, "channels/vector/")
    if als:
        channel = ALSChannel.from_files(als)
        emb, used = channel.item_embeddings(), "als"
    elif vec:
        channel = VectorChannel.from_files(vec)
        emb, used = channel.embeddings, "vector"
    else:
        raise NotFoundError(f"bundle {model}/{bundle.version} has neither an als nor a vector channel")
    if emb.shape[0] != len(item_ids):
        raise InvalidInputError(f"{used} channel has {emb.shape[0]} rows for {len(item_ids)} items")
    origin = {"source": "bundle", "model": model, "model_version": bundle.version, "channel": used}
    return ItemVectors(item_ids, emb, origin, channel.default_now)


def read_export(objects: ObjectStore, prefix: str) -> pd.DataFrame:
    """Every exported behavior row under `prefix` (the worker's Parquet), de-duplicated by event_id."""
    tables = [
        pq.read_table(
            io.BytesIO(objects.get(key)),
            columns=["event_id", "user_id", "item_id", "kind", "timestamp", "value"],
        )
        for key in objects.list(prefix.rstrip("/") + "/")
        if key.endswith(".parquet")
    ]
    if not tables:
        raise NotFoundError(f"no exported Parquet under {prefix!r}")
    frame = pa.concat_tables(tables).to_pandas()
    return frame.drop_duplicates("event_id")


def vectors_from_events(
    objects: ObjectStore, prefix: str, factors: int = 64, iterations: int = 15
) -> ItemVectors:
    """Fit the recall code's ALS on the exported log (event weights as in zerorec.realtime)."""
    rows = read_export(objects, prefix)
    values = rows["value"].astype("float64")
    frame = pd.DataFrame(
        {
            "user_id": rows["user_id"],
            "item_id": rows["item_id"],
            "timestamp": rows["timestamp"].map(lambda t: t.timestamp()),
            "weight": [
                event_weight(k, None if np.isnan(v) else float(v))
                for k, v in zip(rows["kind"], values, strict=True)
            ],
        }
    )
    data = InteractionData.from_frame(normalize_interactions(frame, "export"))
    channel = ALSChannel(factors=factors, iterations=iterations).fit(data)
    origin = {"source": "events", "events_prefix": prefix, "events": len(rows), "users": data.n_users}
    return ItemVectors(
        [str(i) for i in data.item_ids], channel.item_embeddings(), origin, channel.default_now
    )


def vector_files(vectors: ItemVectors) -> dict[str, bytes]:
    """The bundle files: the VectorChannel (index over the normalised embeddings) and item_ids.json."""
    n = len(vectors.item_ids)
    empty = sp.csr_matrix((0, n), dtype=np.float32)
    catalogue = InteractionData(
        np.array([], dtype=object), np.array(vectors.item_ids, dtype=object), empty, empty
    )
    channel = VectorChannel(factors=int(vectors.embeddings.shape[1])).fit(catalogue, vectors.embeddings)
    channel.default_now = vectors.default_now
    files = {CHANNEL_PREFIX + k: v for k, v in channel.to_files().items()}
    files["item_ids.json"] = json.dumps(vectors.item_ids).encode()
    return files


def load_vectors(
    objects: ObjectStore, name: str = DEFAULT_NAME, version: str = "latest"
) -> tuple[list[str], VectorChannel]:
    """(item ids, the VectorChannel) of a published vectors bundle, loaded as recall loads it
    (`zerorec.recall.published_vectors`); search with channel.index."""
    loaded = load_published_vectors(objects, name, version)
    return loaded.item_ids, loaded.channel


def nearest(
    loaded: tuple[list[str], VectorChannel], vector: Sequence[float], k: int = 10
) -> list[tuple[str, float]]:
    """The `k` items nearest (cosine) to `vector` in a loaded vectors bundle."""
    item_ids, channel = loaded
    assert channel.index is not None
    query = np.asarray(vector, dtype=np.float32).reshape(1, -1).copy()
    norm = np.linalg.norm(query)
    if norm > 0:
        query /= norm
    scores, rows = channel.index.search(query, min(k, len(item_ids)))
    return [
        (item_ids[r], float(s)) for r, s in zip(rows[0].tolist(), scores[0].tolist(), strict=True) if r >= 0
    ]


def published_event(name: str, version: str, n_items: int, seconds: float) -> CloudEvent:
    """The validated model.published event for a vectors bundle."""
    data = {
        "name": name,
        "version": version,
        "manifest_key": f"models/{name}/{version}/manifest.json",
        "metrics": {"n_items": n_items, "build_seconds": round(seconds, 3)},
    }
    event = new_event(MODEL_PUBLISHED, data, source=SOURCE, subject=name)
    validate(event)
    return event


def run_vectors(
    objects: ObjectStore,
    bus: EventBus | None,
    *,
    source: str = "bundle",
    model: str = "recommender",
    events_prefix: str = "exports/events",
    name: str = DEFAULT_NAME,
    factors: int = 64,
    vectors: ItemVectors | None = None,
    model_version: str = "latest",
) -> dict[str, Any]:
    """Build, publish and announce the vectors bundle; a JSON-able report. `vectors`: given embeddings."""
    started = time.monotonic()
    if vectors is None:
        if source == "bundle":
            vectors = vectors_from_bundle(objects, model, model_version)
        elif source == "events":
            vectors = vectors_from_events(objects, events_prefix, factors)
        else:
            raise InvalidInputError(f"source must be bundle or events, not {source!r}")
    files = vector_files(vectors)
    params = {**vectors.origin, "dim": int(vectors.embeddings.shape[1]), "metric": "cosine"}
    version = publish_bundle(objects, name, files, params=params, metrics={"n_items": len(vectors.item_ids)})
    seconds = time.monotonic() - started
    event = published_event(name, version, len(vectors.item_ids), seconds)
    if bus is not None:
        bus.publish(models_topic(), [to_kafka_record(event, key=name)])
    return {
        "task": VECTOR_GENERATION,
        "name": name,
        "version": version,
        "items": len(vectors.item_ids),
        "dim": params["dim"],
        "origin": vectors.origin,
        "event_id": event["id"],
        "topic": models_topic() if bus is not None else None,
        "seconds": round(seconds, 3),
    }
