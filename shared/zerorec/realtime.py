"""Real-time state in the key-value store: what the consumer writes and the serving functions read.

One place owns the key layout, so the consumer (writer) and the user / recall / reranking
functions (readers) can never disagree about it. Pure: builds KV command objects, does no I/O.

Layout (all values are strings; `{...}` is the Redis Cluster hash tag: keys with the same tag share a
slot, so one user's reads and the consumer's atomic script stay on one shard):
  u:{u}              the user's record (kv_record): list "h" = history, distinct items newest first,
                     at most HISTORY_MAX (recent = its first RECENT_MAX; seen = all of it), counters
                     "c" = category -> affinity (sum of event weights, the CATEGORIES_MAX largest),
                     and the dedupe window of the user's behavior event ids. TTL USER_STATE_TTL_S,
                     refreshed by every event: a user idle that long is forgotten.
  item:{i}           hash title / categories (JSON) / created_at / attributes (JSON)
  hot:{hot}:all, hot:{hot}:cat:{c}   zset item -> forward-decayed popularity (one slot: the worker
                     refreshes them from the hour buckets in one atomic write, recall reads them
                     in one round trip)
  hot:{hot}:b:<hour>[:cat:{c}]  zset item -> popularity in that hour (the consumer adds every event)
  rt:user:{u}, rt:item:{i}      hash window start -> events (flink-realtime; see "features" below)
  items:{items}:fresh     zset item -> created_at (epoch seconds)
  items:{items}:deleted   zset item -> deleted_at
  evt:{items}:<id>   idempotency token of an item event (catalogue changes are rare), kept for the
                     dedupe window, in the slot of the fresh / deleted markers it guards

Why one record per user: measured with `zerorec bench state`, the old layout (a recent list, a seen
list, a category hash and one `evt:<id>` key per event for 7 days) took ~1,370 bytes per user at 5
events per user and ~3,680 at 20, most of it per-key overhead and per-event keys; this one takes
~310 and ~600 (docs/state.md has the figures).

Exactly once: a behavior event is applied with `kv.apply_once(behavior_token(user, id), ...)`, a
token in the user's own record (same slot, same atomic script as the user's writes). Its window
(ZEROREC_DEDUPE_WINDOW_S, default 1 hour) is sized to the redelivery horizon: the KafkaSource
redelivers within seconds (retries with backoff) to minutes (a consumer restart re-reads from the
last committed offset), and clients re-post a batch within minutes (uuid5 ids: the same content
has the same id). An id is kept at least a window and until the user's record has had writes in
two windows since, so a redelivery after an outage of any length, which precedes the user's newer
events in the partition (the KafkaSource delivers in order per user key), is still caught.
Chosen over per-partition offsets (the consumer gets no partition and offset with an event today:
they would have to travel as CloudEvent extensions; and offsets miss an event produced twice) and
over a global filter (no exact check without a per-event key again). Cost: 10 bytes per
event in the window (a 60-bit fingerprint; a new event is mistaken for a duplicate with probability
ids-in-window / 2**60).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from zerorec.errors import BackendUnavailableError
from zerorec.feedback import NEGATIVE_KINDS
from zerorec.storage.kv import (
    Delete,
    Expire,
    HGetAll,
    HMGet,
    HSet,
    KVStore,
    ReadOp,
    Record,
    RecordGet,
    RecordIncr,
    RecordPush,
    RecordToken,
    SetAdd,
    WriteOp,
    ZIncr,
    ZRem,
    ZTop,
)

HISTORY_MAX = 50  # distinct items a user's record keeps (~7-10 bytes each)
RECENT_MAX = 50  # of them, the recent items that feed item-CF and the other channels
SEEN_MAX = 1000  # seen items a user profile shows (real-time history first, then the trained one)
CATEGORIES_MAX = 8  # category affinities a user's record keeps (the largest: the profile's top 8)
USER_STATE_TTL_S = 30 * 24 * 3600
DEDUPE_WINDOW_S = 3600
HISTORY, CATEGORIES = "h", "c"  # sections of the user's record
NEGATIVE = "x"  # section: items the user disliked or hid, newest first (zerorec.feedback)
NEGATIVE_MAX = 50

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


def user_key(user_id: str) -> str:
    """The user's record: history, category affinities, dedupe window (hash tag: the user id)."""
    return f"u:{{{user_id}}}"


def item_key(item_id: str) -> str:
    return f"item:{{{item_id}}}"


def hot_key(category: str | None = None) -> str:
    return "hot:{hot}:all" if category is None else f"hot:{{hot}}:cat:{category}"


FRESH_KEY = "items:{items}:fresh"
# Deleted items stay in the trained bundle until the next training; serving reads this marker
# (zset item -> deleted_at) so a deleted item is never recommended in the meantime.
DELETED_KEY = "items:{items}:deleted"
DELETED_MAX = 5000


def behavior_token(user_id: str, event_id: str) -> RecordToken:
    """The idempotency token of a behavior event: in the user's record, applied with its writes."""
    return RecordToken(user_key(user_id), event_id)


def item_event_token(event_id: str) -> str:
    """The idempotency token of an item event (a key of its own, in the catalogue markers' slot)."""
    return f"evt:{{items}}:{event_id}"


def _record_safe(text: str) -> bool:
    return not any(c in text for c in "\x1c\x1d\x1e\x1f")


def event_weight(kind: str, value: float | None = None, weights: Mapping[str, float] | None = None) -> float:
    if kind in NEGATIVE_KINDS:  # dislike, hide: never interest, in any popularity or affinity
        return 0.0
    weight = (weights or EVENT_WEIGHTS).get(kind, 1.0)
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


def behavior_writes(
    event: BehaviorEvent, item_categories: Sequence[str], weights: Mapping[str, float] | None = None
) -> list[WriteOp]:
    """The KV writes one behavior event causes (apply them with apply_once and behavior_token).

    Categories holding a control character (the record's separators; the item schema allows
    them) are left out of the user's affinities, not refused: the event is still good.
    A negative kind (dislike, hide) only joins the user's negative list: no history, no hot list."""
    user = user_key(event.user_id)
    if event.kind in NEGATIVE_KINDS:
        return [RecordPush(user, NEGATIVE, event.item_id, NEGATIVE_MAX), Expire(user, USER_STATE_TTL_S)]
    weight = event_weight(event.kind, event.value, weights)
    ops: list[WriteOp] = [RecordPush(user, HISTORY, event.item_id, HISTORY_MAX)]
    for category in item_categories:
        if category and _record_safe(category):
            ops.append(RecordIncr(user, CATEGORIES, category, weight, CATEGORIES_MAX))
    ops.append(Expire(user, USER_STATE_TTL_S))
    return ops + hot_count_writes(event, item_categories, weight)


# ---- hot lists, kept incrementally -------------------------------------------------------------
# Every behavior event adds its decayed weight (forward decay, as above) to
#   hot:{hot}:b:<bucket>            zset item -> weight in the hour bucket starting at <bucket>
#   hot:{hot}:b:<bucket>:cat:<c>    the same per category            (TTL: the window + 2 buckets)
# and to the live lists hot:{hot}:all / hot:{hot}:cat:<c>, which recall reads at once. The worker's
# `refresh-hot` (PingSource, every 5 minutes) replaces each live list with the top n of the sum of
# the buckets in the window: O(buckets x depth) KV reads, whatever the size of the behavior log,
# no consumer group, no re-read. The categories ever counted are the set HOT_CATEGORIES_KEY.
HOT_BUCKET_S = 3600
HOT_WINDOW_MAX_S = 7 * 24 * 3600  # the longest window a refresh may ask for (bucket TTL bound)
HOT_BUCKET_DEPTH = 2000  # members of each bucket a refresh sums (a bucket's head: hot lists are heads)
HOT_CATEGORIES_KEY = "hot:{hot}:cats"


def hot_bucket_start(timestamp_s: float) -> int:
    return int(timestamp_s) // HOT_BUCKET_S * HOT_BUCKET_S


def hot_bucket_key(bucket_start: int, category: str | None = None) -> str:
    base = f"hot:{{hot}}:b:{bucket_start}"
    return base if category is None else f"{base}:cat:{category}"


def hot_count_writes(event: BehaviorEvent, item_categories: Sequence[str], weight: float) -> list[WriteOp]:
    """The hot-list counts one behavior event of `weight` adds: its hour bucket (overall and per
    category) and the live lists. All in the {hot} slot; the bucket keys expire after the longest
    window. Nothing for a weight of 0 or less (negative feedback makes nothing hot)."""
    if weight <= 0:
        return []
    inc = decayed_increment(weight, event.timestamp_s)
    bucket = hot_bucket_start(event.timestamp_s)
    ops: list[WriteOp] = []
    for category in (None, *item_categories):
        ops += [
            ZIncr(hot_key(category), event.item_id, inc),
            ZIncr(hot_bucket_key(bucket, category), event.item_id, inc),
            Expire(hot_bucket_key(bucket, category), HOT_WINDOW_MAX_S + 2 * HOT_BUCKET_S),
        ]
    if item_categories:
        ops.append(SetAdd(HOT_CATEGORIES_KEY, tuple(item_categories)))
    return ops


def hot_window_buckets(now_s: float, window_s: int) -> list[int]:
    """The hour buckets a window of `window_s` ending now covers (the current one included)."""
    if not 0 < window_s <= HOT_WINDOW_MAX_S:
        raise ValueError(f"window_s must be in 1..{HOT_WINDOW_MAX_S}, got {window_s}")
    last = hot_bucket_start(now_s)
    first = hot_bucket_start(now_s - window_s)
    return list(range(first, last + 1, HOT_BUCKET_S))


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
    negative_items: list[str] = field(default_factory=list)  # disliked or hidden, newest first

    @property
    def is_new(self) -> bool:
        return not self.recent_items and not self.seen_items


def user_state_reads(user_id: str) -> list[ReadOp]:
    """One read (one key, one slot) for everything the serving path knows about a user."""
    return [RecordGet(user_key(user_id))]


def user_state_from(user_id: str, results: Sequence) -> UserState:
    """The state from the results of `user_state_reads` (empty for anything but a Record, such as
    the placeholder a caller substitutes when the KV is unreachable)."""
    (record,) = results
    if not isinstance(record, Record):
        record = Record()
    history = record.lists.get(HISTORY, [])
    negative = record.lists.get(NEGATIVE, [])
    return UserState(
        user_id=user_id,
        recent_items=history[:RECENT_MAX],  # distinct, newest first
        # disliked and hidden items count as seen: every stage that filters seen items drops them
        seen_items=list(dict.fromkeys([*history, *negative])),
        category_affinity=dict(record.counters.get(CATEGORIES, {})),
        negative_items=list(negative),
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


def items_present_reads(item_ids: Sequence[str]) -> list[ReadOp]:
    """One field of each item's metadata hash; `present_from` tells which items have one."""
    return [HMGet(item_key(i), ("created_at",)) for i in item_ids]


def present_from(item_ids: Sequence[str], results: Sequence) -> list[str]:
    """The ids of `items_present_reads` whose metadata hash exists (in order): a marker such as a
    fresh-items entry whose hash is gone (a cross-slot write cut short, an eviction) is a ghost."""
    return [i for i, r in zip(item_ids, results, strict=True) if r and r[0] is not None]


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
#   feat:user:{u}:cats     hash category -> affinity (sum of event weights, 30 d), the
#                          CATEGORY_FEATURES_MAX largest
#   (the three feat:* hashes expire FEATURE_TTL_S after the run that wrote them: the nightly job
#   rewrites every user and item of its 30-day window, so a key it stops writing goes away)
#   rt:user:{u}, rt:item:{i}   hash window start (epoch s, a multiple of RT_WINDOW_S) -> behavior
#                          events of that user / on that item in the window (docs/realtime.md).
#   (the braces are literal: the user's / item's hash tag, as in u:{u} and item:{i}, so a user's
#   rt key lives in the slot of its record)
# The rt:* hashes are written by the PyFlink job (jobs/flink_realtime: absolute counts, max-merged,
# fields older than RT_RETENTION_S trimmed, key TTL RT_TTL_S); `read_realtime_counts` reads them.

FEATURE_TTL_S = 2 * 24 * 3600  # offline feature hashes outlive a missed nightly run
CATEGORY_FEATURES_MAX = 32  # category affinities kept per user (the largest)
RT_WINDOW_S = 60  # the Flink job's window (its default --window-s)
RT_RETENTION_S = 3600  # windows a rt:* hash keeps: the last hour answers "events in the last hour"
RT_TTL_S = 2 * 3600  # a rt:* key idle this long is gone (no event for 2 hours: all counts are 0)


def item_features_key(item_id: str) -> str:
    return f"feat:item:{{{item_id}}}"


def user_features_key(user_id: str) -> str:
    return f"feat:user:{{{user_id}}}"


def user_category_features_key(user_id: str) -> str:
    return f"feat:user:{{{user_id}}}:cats"


def rt_item_counts_key(item_id: str) -> str:
    """rt:item:{i}: window start -> events on the item in that window (item's hash tag)."""
    return f"rt:item:{{{item_id}}}"


def rt_user_key(user_id: str) -> str:
    """rt:user:{u}: window start -> the user's events in that window (the user's hash tag)."""
    return f"rt:user:{{{user_id}}}"


@dataclass(frozen=True)
class RealtimeCounts:
    """Behavior events of one user or item: in the last minute (the current window and the one
    before it, so a click counts at once and for at least a window) and in the last hour."""

    last_1m: int = 0
    last_1h: int = 0


NO_COUNTS = RealtimeCounts()


def realtime_counts_from(
    fields: Mapping[str, str], now_s: float, window_s: int = RT_WINDOW_S
) -> RealtimeCounts:
    """The counts in one rt:* hash (window start -> count) as of `now_s`; fields that are not
    integers (a foreign writer) are ignored, a missing hash is all zeros."""
    current = int(now_s) // window_s * window_s
    minute_from = current - window_s
    hour_from = current - RT_RETENTION_S + window_s
    last_1m = last_1h = 0
    for start_text, count_text in fields.items():
        try:
            start, count = int(start_text), int(count_text)
        except (TypeError, ValueError):
            continue
        if hour_from <= start <= current:
            last_1h += count
            if start >= minute_from:
                last_1m += count
    return RealtimeCounts(last_1m, last_1h)


def read_realtime_counts(
    kv: KVStore,
    user_ids: Sequence[str] = (),
    item_ids: Sequence[str] = (),
    *,
    now_s: float | None = None,
    key_prefix: str = "",
) -> tuple[dict[str, RealtimeCounts], dict[str, RealtimeCounts]]:
    """(per user, per item) real-time counts for a batch, in ONE pipelined KV round trip.

    The ranker's reader of flink-realtime's output: a missing key, or a KV that does not answer,
    gives NO_COUNTS (zeros), never an error. `key_prefix` is the job's (tests, side-by-side runs)."""
    now = time.time() if now_s is None else now_s
    users, items = list(dict.fromkeys(user_ids)), list(dict.fromkeys(item_ids))
    reads: list[ReadOp] = [HGetAll(key_prefix + rt_user_key(u)) for u in users]
    reads += [HGetAll(key_prefix + rt_item_counts_key(i)) for i in items]
    try:
        results = kv.read(reads) if reads else []
    except BackendUnavailableError:
        return dict.fromkeys(users, NO_COUNTS), dict.fromkeys(items, NO_COUNTS)
    counts = [realtime_counts_from(r or {}, now) for r in results]
    return dict(zip(users, counts[: len(users)], strict=True)), dict(
        zip(items, counts[len(users) :], strict=True)
    )


def feature_hash_writes(
    key: str, fields: Mapping[str, object], ttl_s: int = FEATURE_TTL_S
) -> list[WriteOp]:
    """Replace the feature hash `key` with `fields` (values become strings); it expires after
    `ttl_s` unless a later run writes it again."""
    return [Delete(key), HSet(key, {k: str(v) for k, v in fields.items()}), Expire(key, ttl_s)]


def user_category_feature_writes(user_id: str, affinities: Mapping[str, float]) -> list[WriteOp]:
    """Replace the user's category-affinity features with the CATEGORY_FEATURES_MAX largest
    (a user active in every category would otherwise hold one field per category)."""
    top = sorted(affinities.items(), key=lambda kv: (-kv[1], kv[0]))[:CATEGORY_FEATURES_MAX]
    return feature_hash_writes(
        user_category_features_key(user_id), {c: repr(round(float(a), 6)) for c, a in top}
    )


def rt_feature_reads(user_id: str, item_ids: Sequence[str]) -> list[ReadOp]:
    """The real-time window counts of a user and of items (the ranker's flink features): one
    HGetAll per key, to be read with other reads in one round trip; parse with `rt_counts_from`.
    The one reader of the rt:* layout (flink-realtime's sink writes it)."""
    return [HGetAll(rt_item_counts_key(i)) for i in item_ids] + [HGetAll(rt_user_key(user_id))]


def rt_counts_from(
    results: Sequence, n_items: int, now: float, windows_s: Sequence[int], window_len_s: int = 60
) -> tuple[list[list[float]], list[float]]:
    """(per item, the user): events in the windows that ended within each of ``windows_s`` seconds
    before ``now``, from the results of `rt_feature_reads`. User and item hashes both map window
    start (epoch s) -> absolute count (docs/realtime.md). Missing or malformed fields count 0."""

    def count(fields: object, start_s: float) -> float:
        if not isinstance(fields, Mapping):
            return 0.0
        total = 0.0
        for key, value in fields.items():
            try:
                ws, n = float(key), float(value)
            except (TypeError, ValueError):
                continue  # "total" and other bookkeeping fields
            if math.isfinite(ws) and math.isfinite(n) and ws + window_len_s > start_s and ws <= now:
                total += max(n, 0.0)
        return total

    items = [[count(r, now - w) for w in windows_s] for r in list(results)[:n_items]]
    user = results[n_items] if len(results) > n_items else {}
    return items, [count(user, now - w) for w in windows_s]
