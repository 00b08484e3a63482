"""A serving function's cold start: fetch its bundle while Python is still importing the function.

A cold start is GIL-bound imports (numpy, scipy, faiss, onnxruntime, pydantic: about half a second)
plus the bundle's download and checksums, which run without the GIL (obstore or file reads,
hashlib). `prefetch` starts the second in a thread from the first lines of a function's main.py so
the two overlap; `online.stage_slot(..., prefetched)` builds the first model from its result. This
module imports settings, storage and bundle only (no numpy), so the download starts early.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from zerorec.bundle import LoadedBundle, load_bundle
from zerorec.settings import Settings, get_settings
from zerorec.storage import object_store


@dataclass(frozen=True)
class ModelParts:
    """Which heavy parts of a bundle a stage builds, and so fetches."""

    channels: frozenset[str] | None = None  # the recall channels to build (None: all of them)
    ranker: bool = True  # the DeepFM ONNX session
    max_users: int | None = None  # no training histories from a bundle of more users (None: any)

    def wants(self, path: str) -> bool:
        """Whether bundle file `path` belongs to a part this stage builds."""
        if path.startswith("channels/"):
            return self.channels is None or path.split("/")[1] in self.channels
        return self.ranker or path != "ranker.onnx"


# Above this many users a bundle's training histories stay out of recall and ranking (user-sized
# arrays: 10M users' histories are GBs): users' histories come from the request or the KV.
SERVING_MAX_USERS = 200_000
ALL_PARTS = ModelParts()
RECALL_PARTS = ModelParts(ranker=False, max_users=SERVING_MAX_USERS)
# Ranking takes the other channels' features from recall's signals; hot gives its popularity ones.
RANKING_PARTS = ModelParts(channels=frozenset({"hot"}), max_users=SERVING_MAX_USERS)
DATA_ONLY = ModelParts(channels=frozenset(), ranker=False)  # reranking, user, item: vocabulary + items


def prefetch(parts: ModelParts, settings: Settings | None = None) -> Future[LoadedBundle]:
    """Start fetching and verifying the latest bundle's `parts` in a background thread."""
    s = settings or get_settings()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bundle-prefetch")
    future = pool.submit(load_bundle, object_store(s), s.model_name, "latest", s.model_cache_dir, parts.wants)
    pool.shutdown(wait=False)  # the thread ends with its one task
    return future
