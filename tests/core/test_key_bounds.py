"""Every per-user and per-item key family the offline features write is bounded: a TTL (a key the
daily job stops writing goes away) and, for the category hash, a cap on its fields."""

from __future__ import annotations

from zerorec.realtime import (
    CATEGORY_FEATURES_MAX,
    FEATURE_TTL_S,
    feature_hash_writes,
    item_features_key,
    user_category_feature_writes,
    user_category_features_key,
)
from zerorec.storage.kv import HGetAll
from zerorec.storage.kv_memory import MemoryKVStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_feature_hashes_expire_unless_rewritten() -> None:
    clock = Clock()
    kv = MemoryKVStore(clock=clock)
    kv.write(feature_hash_writes(item_features_key("i1"), {"cnt_1d": 3}))
    kv.write(user_category_feature_writes("u1", {"a": 1.0}))
    clock.t += FEATURE_TTL_S - 60
    assert kv.read([HGetAll(item_features_key("i1"))]) == [{"cnt_1d": "3"}]
    kv.write(user_category_feature_writes("u1", {"b": 2.0}))  # the next run rewrites u1 only
    clock.t += 120
    item, cats = kv.read([HGetAll(item_features_key("i1")), HGetAll(user_category_features_key("u1"))])
    assert item == {} and cats == {"b": "2.0"}


def test_category_features_keep_the_largest_only() -> None:
    kv = MemoryKVStore()
    affinities = {f"c{n:03d}": float(n) for n in range(500)}
    kv.write(user_category_feature_writes("u1", affinities))
    (cats,) = kv.read([HGetAll(user_category_features_key("u1"))])
    assert len(cats) == CATEGORY_FEATURES_MAX
    assert set(cats) == {f"c{n:03d}" for n in range(500 - CATEGORY_FEATURES_MAX, 500)}
