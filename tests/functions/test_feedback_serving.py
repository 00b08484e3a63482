"""Negative feedback and guests through the real serving stages on a tiny trained model: a disliked
item is never recalled again and its item-CF neighbours are demoted (after ranking too); a guest's
session items drive recall without any user state."""

from __future__ import annotations

import time

from fn_stack import Tiny
from zerorec.api import RecallRequest, RecallResponse
from zerorec.bff import _ranked
from zerorec.feedback import DEMOTE, GUEST_USER_ID, neighbours_of
from zerorec.online import RecallStage, ServingModel, UserStage
from zerorec.pipeline import Recommender
from zerorec.realtime import BehaviorEvent, behavior_writes
from zerorec.settings import get_settings
from zerorec.storage.kv_memory import MemoryKVStore


def _model(tiny: Tiny) -> ServingModel:
    return ServingModel("recommender", "v-test", Recommender.from_files(tiny.files), {})


def _recall(stage: RecallStage, **req: object) -> list[dict]:
    out = stage.recall(RecallRequest(n=80, **req))  # type: ignore[arg-type]
    RecallResponse.model_validate(out)  # the contract, demote included
    return out["candidates"]


def test_a_dislike_removes_the_item_and_demotes_its_neighbours(tiny: Tiny) -> None:
    model, kv = _model(tiny), MemoryKVStore()
    user = "fb-user"
    for item in tiny.history(str(tiny.interactions.user_id.iloc[0]))[:5]:
        kv.write(behavior_writes(BehaviorEvent(user, item, "click", time.time()), []))
    stage = RecallStage(model, kv)
    before = _recall(stage, user_id=user)
    assert before and all(DEMOTE not in c for c in before)
    disliked = before[0]["item_id"]

    kv.write(behavior_writes(BehaviorEvent(user, disliked, "dislike", time.time()), []))
    after = _recall(stage, user_id=user)

    ids = [c["item_id"] for c in after]
    assert disliked not in ids
    rec = model.rec
    near = neighbours_of(
        rec.data.item_index,
        rec.channels["itemcf"].lists.neighbours,
        [disliked],
        get_settings().negative_neighbours,
    )
    near_ids = {str(i) for i in rec.data.item_ids[near]} - {disliked}
    demoted = {c["item_id"] for c in after if DEMOTE in c}
    assert demoted, "no neighbour of the disliked item among the candidates"
    assert demoted == near_ids & set(ids)
    # After ranking (equal scores here), the BFF puts every demoted candidate below the others.
    ranked = sorted(_ranked(after, [1.0] * len(after)), key=lambda r: -r["score"])
    first_demoted = min(k for k, r in enumerate(ranked) if r["item_id"] in demoted)
    assert all(r["item_id"] in demoted for r in ranked[first_demoted:])
    # The profile shows it as seen, so the BFF and reranking never show it either.
    profile = UserStage(model, kv).profile(user)
    assert disliked in profile["seen_items"] and disliked not in profile["recent_items"]


def test_a_hide_is_remembered_and_a_guest_has_no_state(tiny: Tiny) -> None:
    model, kv = _model(tiny), MemoryKVStore()
    history = tiny.history(str(tiny.interactions.user_id.iloc[1]))
    session = history[:3]
    stage = RecallStage(model, kv)

    guest = _recall(stage, user_id=GUEST_USER_ID, recent_items=session)
    other = _recall(stage, user_id=GUEST_USER_ID, recent_items=history[-3:])
    guest_ids = [c["item_id"] for c in guest]
    assert guest_ids and not set(session) & set(guest_ids)  # the session's items are not re-offered
    assert guest_ids != [c["item_id"] for c in other]  # the session drives it
    assert any(c["channel"] in ("itemcf", "ease") for c in guest)  # personal channels, not only hot

    kv.write(behavior_writes(BehaviorEvent("hider", guest_ids[0], "hide", time.time()), []))
    kv.write(behavior_writes(BehaviorEvent("hider", session[0], "click", time.time()), []))
    assert guest_ids[0] not in [c["item_id"] for c in _recall(stage, user_id="hider")]
