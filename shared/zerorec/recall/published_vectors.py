"""Recall's vector channel from vector-generation's published bundle (`jobs/vector_generation`).

vector-generation publishes bundle "vectors" (`ZEROREC_VECTORS_MODEL`): `channels/vector/` (a
`VectorChannel`: float16 L2-normalised embeddings, a serialised faiss index when HNSW) and
`item_ids.json` (row i is item_ids[i]), then announces it with `model.published` on the models topic,
which a KafkaSource routes to recall. Recall loads it at cold start and on that event (and follows
LATEST like the model), and `attach` makes it the vector channel of the loaded recommender: rows
are matched to the model's vocabulary by item id, so a bundle built from another model version, or
from the exported events, serves too. Items the vectors do not know get a zero vector (they never
come up as neighbours; their inner product with any query is 0). When the vocabularies are equal
(the usual case: vectors from the current model's ALS factors) the published index is used as it
is, HNSW included; otherwise the index is rebuilt once (off the request path: this runs in the
slot's loader thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zerorec.bundle import load_bundle
from zerorec.errors import IntegrityError
from zerorec.recall.channels import VectorChannel
from zerorec.recall.index import ItemIndex
from zerorec.settings import Settings
from zerorec.storage.objects import ObjectStore

log = logging.getLogger("zerorec.recall.vectors")

VECTORS_PREFIX = "channels/vector/"
DEFAULT_VECTORS_NAME = "vectors"


@dataclass(frozen=True)
class PublishedVectors:
    """A loaded vectors bundle: its version, item ids (row order) and channel."""

    name: str
    version: str
    item_ids: list[str]
    channel: VectorChannel


def load_published_vectors(
    store: ObjectStore,
    name: str = DEFAULT_VECTORS_NAME,
    version: str = "latest",
    cache_dir: Path | None = None,
) -> PublishedVectors:
    """Fetch and verify a vectors bundle (IntegrityError on any mismatch, NotFoundError if none)."""
    bundle = load_bundle(store, name, version, cache_dir=cache_dir)
    files = {k[len(VECTORS_PREFIX) :]: v for k, v in bundle.files.items() if k.startswith(VECTORS_PREFIX)}
    if not files:
        raise IntegrityError(f"bundle {name}/{bundle.version} has no {VECTORS_PREFIX} files")
    item_ids = [str(i) for i in bundle.json("item_ids.json")]
    channel = VectorChannel.from_files(files)
    if channel.embeddings16.shape[0] != len(item_ids):
        rows = channel.embeddings16.shape[0]
        raise IntegrityError(f"bundle {name}/{bundle.version}: {rows} vectors for {len(item_ids)} items")
    return PublishedVectors(bundle.name, bundle.version, item_ids, channel)


def aligned_channel(
    vectors: PublishedVectors, model_item_ids: Sequence[Any], like: VectorChannel | None = None
) -> VectorChannel:
    """The published vectors as a vector channel over the model's item vocabulary (row k is the
    model's item k). `like` (the model's own vector channel) gives the query settings (recent
    items, half-life) and the reference time."""
    model_ids = np.asarray([str(i) for i in model_item_ids], dtype=object)
    src = vectors.channel
    dim = int(src.embeddings16.shape[1]) if src.embeddings16.ndim == 2 else 0
    params = like.params() if like is not None else {}
    channel = VectorChannel(
        recent=params.get("recent", 20), half_life_days=params.get("half_life_days", 30.0), factors=dim
    )
    if len(model_ids) == len(vectors.item_ids) and np.array_equal(
        model_ids, np.asarray(vectors.item_ids, object)
    ):
        channel.embeddings16 = src.embeddings16
        channel._index = src._index  # the published HNSW when there is one (else built lazily)
    else:
        position = {item: row for row, item in enumerate(vectors.item_ids)}
        rows = np.fromiter((position.get(i, -1) for i in model_ids), dtype=np.int64, count=len(model_ids))
        emb = np.zeros((len(model_ids), dim), dtype=np.float16)
        known = rows >= 0
        emb[known] = src.embeddings16[rows[known]]
        channel.embeddings16 = emb
        channel._index = ItemIndex(emb)  # built here, in the loader thread, not by a request
    channel.n_items = len(model_ids)
    channel.default_now = like.default_now if like is not None else src.default_now
    return channel


def overlap(vectors: PublishedVectors, model_item_ids: Sequence[Any]) -> int:
    """How many of the model's items the vectors know."""
    return len(set(vectors.item_ids).intersection(str(i) for i in model_item_ids))


class VectorsFeed:
    """Recall's holder of the published vectors: a `ModelSlot` of its own (loaded at cold start,
    reloaded on a `model.published` event naming the vectors bundle, LATEST polled like the
    model's) that puts the vectors into the recall model it was last given (`attach`)."""

    def __init__(self, settings: Settings) -> None:
        from zerorec.bundle import latest_version
        from zerorec.serving import ModelSlot
        from zerorec.storage import object_store

        self.settings = settings
        self.name = settings.vectors_model
        self._store = object_store(settings)
        self._lock = threading.Lock()
        self._vectors: PublishedVectors | None = None
        self._model: Any = None  # the online.ServingModel whose vector channel this feeds
        self._own: VectorChannel | None = None  # that model's own (trained) vector channel
        self.slot: ModelSlot[PublishedVectors] = ModelSlot(
            self.name,
            self._load,
            retry_s=max(settings.model_retry_s, settings.model_poll_s),  # no bundle yet: check rarely
            latest=lambda: latest_version(self._store, self.name),
            poll_s=settings.model_poll_s,
        )

    def _load(self, version: str) -> tuple[str, PublishedVectors]:
        vectors = load_published_vectors(self._store, self.name, version, self.settings.model_cache_dir)
        with self._lock:
            self._vectors = vectors
            if self._model is not None:
                self._feed(self._model)
        return vectors.version, vectors

    def attach(self, model: Any) -> Any:
        """Give `model` (an online.ServingModel, just loaded) the published vectors as its vector
        channel; it keeps its own when there are none, or none of its items is in them."""
        with self._lock:
            self._model, self._own = model, model.rec.channels.get("vector")
            self._feed(model)
        return model

    def _feed(self, model: Any) -> None:
        vectors, rec = self._vectors, model.rec
        if vectors is None:
            return
        known = overlap(vectors, rec.data.item_ids)
        if not known:
            log.warning(
                "vectors %s/%s know none of model %s's items: not used",
                self.name,
                vectors.version,
                model.version,
            )
            return
        rec.channels["vector"] = aligned_channel(vectors, rec.data.item_ids, self._own)
        log.warning(
            "vector channel: %s/%s (%d of %d items) for model %s",
            self.name,
            vectors.version,
            known,
            rec.data.n_items,
            model.version,
        )

    def load(self) -> bool:
        """The cold start's load (when the bundle is enabled); False (logged) if there is none yet."""
        return bool(self.name) and self.slot.load()

    def refresh_if_due(self) -> None:
        if self.name:
            self.slot.refresh_if_due()
