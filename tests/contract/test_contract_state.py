"""The consumer's real-time state on every KV backend (memory, SQLite, Redis, a Redis Cluster):
exactly-once application of redelivered behavior and item events, through EventApplier."""

from __future__ import annotations

import time
from typing import Any

from zerorec.cloudevents_io import new_event
from zerorec.consumer import BEHAVIOR_TYPE, DELETE_TYPE, UPSERT_TYPE, EventApplier
from zerorec.realtime import (
    CATEGORIES_MAX,
    HISTORY_MAX,
    USER_STATE_TTL_S,
    behavior_token,
    catalogue_from,
    catalogue_reads,
    hot_key,
    user_key,
    user_state_from,
    user_state_reads,
)
from zerorec.storage.kv import KVStore, TokenSeen, ZTop


def _click(user: str, item: str, event_id: str) -> Any:
    data = {"kind": "click", "user_id": user, "item_id": item, "timestamp": "2024-05-01T12:00:00Z"}
    return new_event(BEHAVIOR_TYPE, data, source="/test", event_id=event_id)


def _upsert(item: str, *cats: str, event_id: str) -> Any:
    data = {
        "item_id": item,
        "title": item,
        "categories": list(cats),
        "created_at": "2024-05-01T12:00:00Z",
        "attributes": {},
    }
    return new_event(UPSERT_TYPE, data, source="/test", event_id=event_id)


def test_redelivered_events_within_the_window_apply_once(kv: KVStore, namespace: str) -> None:
    applier = EventApplier(kv, category_cache_s=0, dedupe_window_s=3600)
    users = [f"{namespace}u{n}" for n in range(5)]
    item = f"{namespace}i"
    assert applier.apply(_upsert(item, f"{namespace}c", event_id=f"{namespace}up")).applied
    assert not applier.apply(_upsert(item, f"{namespace}c", event_id=f"{namespace}up")).applied
    events = [_click(u, item, f"{namespace}e{n}") for n, u in enumerate(users * 4)]  # 4 per user
    first = applier.apply_batch(events[:12])
    assert [r["applied"] for r in first] == [True] * 12
    # the KafkaSource redelivers from the last committed offset: old and new events together,
    # then one by one (the unbatched path), then the whole stream once more
    again = applier.apply_batch(events[8:])
    assert [r["applied"] for r in again] == [False] * 4 + [True] * 8
    assert [applier.apply(e).applied for e in events[:3]] == [False] * 3
    assert all(not r["applied"] for r in applier.apply_batch(events))
    states = [user_state_from(u, kv.read(user_state_reads(u))) for u in users]
    assert all(s.category_affinity == {f"{namespace}c": 4.0} for s in states)  # 4 clicks each, once
    assert all(s.recent_items == [item] and s.seen_items == [item] for s in states)
    (hot,) = kv.read([ZTop(hot_key(f"{namespace}c"), 10)])
    assert len(hot) == 1 and hot[0][0] == item
    (all_hot,) = kv.read([ZTop(hot_key(), 100_000)])
    assert dict(all_hot)[item] == hot[0][1]  # each click counted once in both lists
    tokens = kv.read([TokenSeen(behavior_token(u, f"{namespace}e{n}")) for n, u in enumerate(users * 4)])
    assert all(tokens)


def test_user_state_is_one_capped_key_with_a_ttl(kv: KVStore, namespace: str) -> None:
    applier = EventApplier(kv, category_cache_s=0)
    user = f"{namespace}u"
    cats = [f"{namespace}c{n}" for n in range(CATEGORIES_MAX + 4)]
    items = [f"{namespace}i{n}" for n in range(HISTORY_MAX + 10)]
    for n, item in enumerate(items):
        applier.apply(_upsert(item, cats[n % len(cats)], event_id=f"{namespace}up{n}"))
    events = [_click(user, item, f"{namespace}e{n}") for n, item in enumerate(items)]
    assert all(r["status"] == 200 for r in applier.apply_batch(events))
    state = user_state_from(user, kv.read(user_state_reads(user)))
    assert state.seen_items == items[::-1][:HISTORY_MAX]  # newest first, capped
    assert len(state.category_affinity) == CATEGORIES_MAX
    fresh, deleted = catalogue_from(kv.read(catalogue_reads(1000)))
    assert set(items) <= set(fresh) and not deleted & set(items)
    applier.apply(new_event(DELETE_TYPE, {"item_id": items[0]}, source="/t", event_id=f"{namespace}del"))
    _, deleted = catalogue_from(kv.read(catalogue_reads(1000)))
    assert items[0] in deleted
    if hasattr(kv, "_r"):  # a real Redis: the record carries the user-state TTL
        client = kv._client()  # type: ignore[attr-defined]
        assert 0 < client.ttl(user_key(user)) <= USER_STATE_TTL_S
        assert client.type(user_key(user)) == "string"


def test_a_redelivery_after_a_long_outage_is_still_a_duplicate(kv: KVStore, namespace: str) -> None:
    applier = EventApplier(kv, category_cache_s=0, dedupe_window_s=1)
    user, item = f"{namespace}u", f"{namespace}i"
    applier.apply(_upsert(item, "c", event_id=f"{namespace}up"))
    assert applier.apply(_click(user, item, f"{namespace}e1")).applied
    time.sleep(2.2)  # the consumer was down for two windows; the redelivery comes first
    assert not applier.apply(_click(user, item, f"{namespace}e1")).applied
    assert applier.apply(_click(user, item, f"{namespace}e2")).applied
    assert user_state_from(user, kv.read(user_state_reads(user))).category_affinity == {"c": 2.0}
