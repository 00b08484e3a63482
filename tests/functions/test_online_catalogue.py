"""Catalogue changes since training reach the serving stages without retraining:
a deleted item is never recalled, a new item gets recalled (channel fresh) and a fresh slot."""

from __future__ import annotations

import time

from fn_stack import Tiny
from zerorec.api import RecallCandidate, RecallRequest, RecallResponse, RerankRequest
from zerorec.online import RecallStage, RerankStage, ServingModel
from zerorec.pipeline import Recommender
from zerorec.realtime import ItemRecord, item_delete_writes, item_upsert_writes
from zerorec.storage.kv import ZTop
from zerorec.storage.kv_memory import MemoryKVStore


def _stages(tiny: Tiny) -> tuple[ServingModel, MemoryKVStore]:
    model = ServingModel("recommender", "v-test", Recommender.from_files(tiny.files), {})
    return model, MemoryKVStore()


def _recall(stage: RecallStage, user: str) -> list[RecallCandidate]:
    """recall's plain-data answer, checked against the RecallResponse contract."""
    return RecallResponse.model_validate(stage.recall(RecallRequest(user_id=user, n=50))).candidates


def test_deleted_item_is_not_recalled_and_new_item_is(tiny: Tiny) -> None:
    model, kv = _stages(tiny)
    user = str(tiny.interactions.user_id.iloc[0])
    recall = RecallStage(model, kv)
    before = [c.item_id for c in _recall(recall, user)]
    gone = before[0]

    kv.write(item_delete_writes(gone, deleted_at_s=time.time()))
    kv.write(item_upsert_writes(ItemRecord("brand-new-item", "New", ("Drama",), time.time())))
    after = _recall(recall, user)

    ids = [c.item_id for c in after]
    assert gone not in ids
    assert ids[-1] == "brand-new-item" and after[-1].channel == "fresh"

    # Re-listing the deleted item makes it recallable again.
    kv.write(item_upsert_writes(ItemRecord(gone, "Back", (), time.time())))
    assert gone in [c.item_id for c in _recall(recall, user)]


def test_a_fresh_marker_without_its_item_hash_is_not_recalled(tiny: Tiny) -> None:
    """A ghost: the fresh-items zset names an item whose metadata hash is gone (a Redis Cluster
    write cut short between the {items} slot and the item's own, an eviction). Recall offers only
    new items it can show."""
    from zerorec.realtime import FRESH_KEY, item_key
    from zerorec.storage.kv import Delete

    model, kv = _stages(tiny)
    user = str(tiny.interactions.user_id.iloc[0])
    kv.write(item_upsert_writes(ItemRecord("real-new", "New", ("Drama",), time.time())))
    kv.write(item_upsert_writes(ItemRecord("ghost-new", "Gone", ("Drama",), time.time() + 1)))
    kv.write([Delete(item_key("ghost-new"))])  # the hash goes, the marker stays
    assert "ghost-new" in [m for m, _ in kv.read([ZTop(FRESH_KEY, 10)])[0]]
    ids = [c.item_id for c in _recall(RecallStage(model, kv), user)]
    assert "real-new" in ids and "ghost-new" not in ids


def test_rerank_keeps_a_fresh_slot_for_items_newer_than_the_model(tiny: Tiny) -> None:
    model, kv = _stages(tiny)
    user = str(tiny.interactions.user_id.iloc[0])
    kv.write(item_upsert_writes(ItemRecord("brand-new-item", "New", ("Drama",), time.time())))
    candidates = _recall(RecallStage(model, kv), user)
    items = [
        {"item_id": c.item_id, "score": 1.0 - k / 100, "channel": c.channel} for k, c in enumerate(candidates)
    ]

    out = RerankStage(model).rerank(RerankRequest(user_id=user, items=items, n=10, seen=[])).items

    assert len(out) == 10
    assert out[-1].item_id == "brand-new-item"
    assert any("fresh slot" in r for r in out[-1].reasons)
    assert all(o.item_id != "brand-new-item" for o in out[:-1])
