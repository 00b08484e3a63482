"""Real-time state in the key-value store: what the consumer writes and the serving functions read.

One place owns the key layout, so the consumer (writer) and the user / recall / reranking
functions (readers) can never disagree about it. Pure: builds KV command objects, does no I/O.

Layout (all values are strings):
  user:{u}:recent    list, newest first, bounded (item-CF history, no retraining needed)
  user:{u}:seen      list, newest first, bounded (the reranker's already-seen filter)
  user:{u}:cats      hash category -> affinity (sum of event weights)
  item:{i}           hash title / categories (JSON) / created_at / attributes (JSON)
  hot:all, hot:cat:{c}  zset item -> forward-decayed popularity
  items:fresh        zset item -> created_at (epoch seconds)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from zerorec.storage.kv import (
    Delete,
    HGetAll,
    HIncr,
    HMGet,
    HSet,
    ListPush,
    ListRange,
    ReadOp,
    WriteOp,
    ZIncr,
    ZRem,
    ZTop,
)

RECENT_MAX = 50
SEEN_MAX = 1000

# How much each behaviour says about taste; ratings scale with the stars given.
EVENT_WEIGHTS: Mapping[str, float] = {
    "view": 0.5,
    "click": 1.0,
    "like": 2.0,
    "add_to_cart": 3.0,
    "purchase": 4.0,
    "rating": 1.0,
}

# Forward decay (Cormode et al.): add w * exp((t - LANDMARK) / TAU) instead of decaying every
# stored score. Scores stay comparable and ordered by decayed popularity; float64 holds them
# for ~12 years past the landmark with TAU = 7 days, and the worker's rebuild re-bases them.
HOT_LANDMARK_S = 1_704_067_200  # 2024-01-01T00:00:00Z
HOT_TAU_S = 7 * 24 * 3600


def user_recent_key(user_id: str) -> str:
    return f"user:{user_id}:recent"


def user_seen_key(user_id: str) -> str:
    return f"user:{user_id}:seen"


def user_categories_key(user_id: str) -> str:
    return f"user:{user_id}:cats"


def item_key(item_id: str) -> str:
    return f"item:{item_id}"


def hot_key(category: str | None = None) -> str:
    return "hot:all" if category is None else f"hot:cat:{category}"


FRESH_KEY = "items:fresh"
# Deleted items stay in the trained bundle until the next training; serving reads this marker
# (zset item -> deleted_at) so a deleted item is never recommended in the meantime.
DELETED_KEY = "items:deleted"
DELETED_MAX = 5000


def event_token(event_id: str) -> str:
    """The idempotency token of an event: apply_once(token, ...) never double counts it."""
    return f"evt:{event_id}"


def event_weight(kind: str, value: float | None = None) -> float:
    weight = EVENT_WEIGHTS.get(kind, 1.0)
    if kind == "rating" and value is not None:
        weight = max(0.0, (value - 2.5) / 2.5) + 0.2  # a 1-star rating still says "seen", barely liked
    return weight


def decayed_increment(weight: float, timestamp_s: float) -> float:
    return weight * math.exp((timestamp_s - HOT_LANDMARK_S) / HOT_TAU_S)


@dataclass(frozen=True)
class BehaviorEvent:
    user_id: str
    item_id: str
    kind: str
    timestamp_s: float
    value: float | None = None


def behavior_writes(event: BehaviorEvent, item_categories: Sequence[str]) -> list[WriteOp]:
    """The KV writes one behavior event causes (apply them with apply_once, keyed by event id)."""
    weight = event_weight(event.kind, event.value)
    hot_inc = decayed_increment(weight, event.timestamp_s)
    ops: list[WriteOp] = [
        ListPush(user_recent_key(event.user_id), (event.item_id,), RECENT_MAX),
        ListPush(user_seen_key(event.user_id), (event.item_id,), SEEN_MAX),
        ZIncr(hot_key(), event.item_id, hot_inc),
    ]
    for category in item_categories:
        ops.append(ZIncr(hot_key(category), event.item_id, hot_inc))
        ops.append(HIncr(user_categories_key(event.user_id), category, weight))
    return ops


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    title: str = ""
    categories: tuple[str, ...] = ()
    created_at_s: float = 0.0
    attributes: Mapping[str, object] = field(default_factory=dict)

    def to_hash(self) -> dict[str, str]:
        return {
            "title": self.title,
            "categories": json.dumps(list(self.categories)),
            "created_at": repr(float(self.created_at_s)),
            "attributes": json.dumps(dict(self.attributes), sort_keys=True),
        }

    @classmethod
    def from_hash(cls, item_id: str, fields: Mapping[str, str]) -> ItemRecord:
        return cls(
            item_id=item_id,
            title=fields.get("title", ""),
            categories=tuple(json.loads(fields.get("categories", "[]"))),
            created_at_s=float(fields.get("created_at", 0.0)),
            attributes=json.loads(fields.get("attributes", "{}")),
        )


def item_upsert_writes(item: ItemRecord) -> list[WriteOp]:
    """Replace the item's metadata and (re)place it in the fresh-items channel."""
    return [
        Delete(item_key(item.item_id)),
        HSet(item_key(item.item_id), item.to_hash()),
        ZRem(FRESH_KEY, item.item_id),
        ZIncr(FRESH_KEY, item.item_id, float(item.created_at_s)),
        ZRem(DELETED_KEY, item.item_id),  # a re-listed item is live again
    ]


def item_delete_writes(
    item_id: str, categories: Sequence[str] = (), deleted_at_s: float = 0.0
) -> list[WriteOp]:
    """Drop the item's metadata and its places in fresh, hot and its categories' hot lists,
    and mark it deleted for the serving path (the trained bundle still knows it)."""
    ops: list[WriteOp] = [
        Delete(item_key(item_id)),
        ZRem(FRESH_KEY, item_id),
        ZRem(hot_key(), item_id),
        ZRem(DELETED_KEY, item_id),
        ZIncr(DELETED_KEY, item_id, float(deleted_at_s)),
    ]
    ops += [ZRem(hot_key(c), item_id) for c in categories]
    return ops


@dataclass(frozen=True)
class UserState:
    user_id: str
    recent_items: list[str]
    seen_items: list[str]
    category_affinity: dict[str, float]

    @property
    def is_new(self) -> bool:
        return not self.recent_items and not self.seen_items


def user_state_reads(user_id: str) -> list[ReadOp]:
    """One pipelined round trip for everything the serving path knows about a user."""
    return [
        ListRange(user_recent_key(user_id), 0, RECENT_MAX - 1),
        ListRange(user_seen_key(user_id), 0, SEEN_MAX - 1),
        HGetAll(user_categories_key(user_id)),
    ]


def user_state_from(user_id: str, results: Sequence) -> UserState:
    recent, seen, cats = results
    return UserState(
        user_id=user_id,
        recent_items=list(dict.fromkeys(recent)),  # de-duplicated, newest first
        seen_items=list(dict.fromkeys(seen)),
        category_affinity={c: float(v) for c, v in cats.items()},
    )


def hot_reads(n: int, category: str | None = None) -> list[ReadOp]:
    return [ZTop(hot_key(category), n)]


def fresh_reads(n: int) -> list[ReadOp]:
    return [ZTop(FRESH_KEY, n)]


def catalogue_reads(fresh_n: int) -> list[ReadOp]:
    """The newest `fresh_n` items and the deletion markers; parse with `catalogue_from`."""
    return [ZTop(FRESH_KEY, fresh_n), ZTop(DELETED_KEY, DELETED_MAX)]


def catalogue_from(results: Sequence) -> tuple[list[str], set[str]]:
    """(fresh item ids newest first, deleted item ids) from the results of `catalogue_reads`."""
    fresh, deleted = results
    return [i for i, _ in fresh], {i for i, _ in deleted}


def item_reads(item_ids: Sequence[str]) -> list[ReadOp]:
    return [HGetAll(item_key(i)) for i in item_ids]


def item_categories_read(item_id: str) -> ReadOp:
    """The item's categories field (JSON list) alone; parse with `categories_from`."""
    return HMGet(item_key(item_id), ("categories",))


def categories_from(result: Sequence[str | None]) -> tuple[str, ...]:
    """Categories from the HMGet of `item_categories_read` (empty for an unknown item)."""
    raw = result[0] if result else None
    if not raw:
        return ()
    try:
        parsed = json.loads(raw)
    except ValueError:
        return ()
    return tuple(str(c) for c in parsed) if isinstance(parsed, list) else ()


# ---- features: offline (feature-engineering, Spark) and real-time (flink-realtime) ------------
#   feat:item:{i}          hash window popularity (cnt_1d, cnt_7d, cnt_30d), as_of
#   feat:user:{u}          hash counts by kind (n_<kind>, n_total), last_active (epoch s), as_of
#   feat:user:{u}:cats     hash category -> affinity (sum of event weights, 30 d)
#   rt:item:{i}:cnt        hash window start (epoch s) -> events in that 1-minute window (TTL-bounded)
#   rt:user:{u}            hash window_start, events (in the user's last closed window)

FEATURE_TTL_S = 2 * 24 * 3600  # real-time counters expire on their own


def item_features_key(item_id: str) -> str:
    return f"feat:item:{item_id}"


def user_features_key(user_id: str) -> str:
    return f"feat:user:{user_id}"


def user_category_features_key(user_id: str) -> str:
    return f"feat:user:{user_id}:cats"


def rt_item_counts_key(item_id: str) -> str:
    return f"rt:item:{item_id}:cnt"


def rt_user_key(user_id: str) -> str:
    return f"rt:user:{user_id}"


def feature_hash_writes(key: str, fields: Mapping[str, object]) -> list[WriteOp]:
    """Replace the feature hash `key` with `fields` (values become strings)."""
    return [Delete(key), HSet(key, {k: str(v) for k, v in fields.items()})]
