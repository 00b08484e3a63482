"""A stage builds only the parts of the bundle it uses, with the same answers as the full model."""

from __future__ import annotations

from pathlib import Path

from conftest import Tiny
from fn_bundles import publish
from zerorec.api import RecallRequest, RecallResponse, RerankRequest
from zerorec.online import (
    ALL_PARTS,
    DATA_ONLY,
    RECALL_PARTS,
    ItemStage,
    RecallStage,
    RerankStage,
    UserStage,
    load_model,
)
from zerorec.storage.kv_memory import MemoryKVStore
from zerorec.storage.objects_local import LocalObjectStore


def test_data_only_model_answers_like_the_full_one(tiny: Tiny, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    publish(store, "recommender", tiny.files)
    full = load_model(store, "recommender", parts=ALL_PARTS)
    data = load_model(store, "recommender", parts=DATA_ONLY)
    recall = load_model(store, "recommender", parts=RECALL_PARTS)
    assert data.rec.channels == {} and data.rec.scorer is None
    assert set(recall.rec.channels) == set(full.rec.channels) and recall.rec.scorer is None
    assert full.rec.scorer is not None
    assert data.version == full.version

    kv = MemoryKVStore()
    user = str(tiny.interactions.user_id.iloc[0])
    cands = RecallResponse.model_validate(RecallStage(full, kv).recall(RecallRequest(user_id=user, n=60)))
    assert cands == RecallResponse.model_validate(
        RecallStage(recall, kv).recall(RecallRequest(user_id=user, n=60))
    )
    items = [
        {"item_id": c.item_id, "score": 1 - k / 100, "channel": c.channel}
        for k, c in enumerate(cands.candidates)
    ]
    req = RerankRequest(user_id=user, items=items, n=10, seen=[items[0]["item_id"]])
    assert RerankStage(data).rerank(req) == RerankStage(full).rerank(req)
    assert UserStage(data, kv).profile(user) == UserStage(full, kv).profile(user)
    ids = [c.item_id for c in cands.candidates[:20]]
    assert ItemStage(data, kv).lookup(ids) == ItemStage(full, kv).lookup(ids)
