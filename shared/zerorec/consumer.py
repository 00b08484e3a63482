"""Apply behavior and item CloudEvents to the real-time KV state, exactly once per event id.

`EventApplier.apply(event)` validates the event against its schema (InvalidInputError: the sink
answers 4xx, the KafkaSource dead-letters it without retrying), turns it into the writes of
`zerorec.realtime` and runs them with `kv.apply_once(token, ...)`: a redelivered event is a no-op,
so at-least-once delivery never double counts. A behavior event's token lives in the dedupe window
of the user's own record (`realtime.behavior_token`: same key, same atomic script, ~10 bytes per
event for `dedupe_window_s`; `zerorec.realtime` says why this and not offsets); an item event's is a
key of its own kept for the window (`realtime.item_event_token`). A KV outage raises
BackendUnavailableError (the sink answers 5xx and the KafkaSource retries).

Behavior events need the clicked item's categories (hot-per-category, user affinities): they come from
the item hash, behind a small TTL cache (`category_cache_s`), because one extra KV round trip per
event would be a third of the consumer's cost; an item event seen by this process drops its entry.

`apply_batch(events)` (the batched delivery of the local dispatcher) gives one result per event and
runs each run of consecutive behavior events as ONE `kv.apply_many` (still exactly once per event id);
an item event is applied on its own, after what came before it, since it reads the item's current
categories.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zerorec.cloudevents_io import CloudEvent, effective_type, event_data, validate
from zerorec.errors import BackendUnavailableError, InvalidInputError
from zerorec.event_schemas import SchemaCatalogue, catalogue, parse_timestamp
from zerorec.feedback import NEGATIVE_KINDS
from zerorec.realtime import (
    DEDUPE_WINDOW_S,
    BehaviorEvent,
    ItemRecord,
    behavior_token,
    behavior_writes,
    categories_from,
    hot_key,
    item_categories_read,
    item_delete_writes,
    item_event_token,
    item_upsert_writes,
)
from zerorec.storage.kv import KVStore, Token, WriteOp, ZRem

BEHAVIOR_TYPE = "dev.zerorec.behavior.v1"
UPSERT_TYPE = "dev.zerorec.item.upserted.v1"
DELETE_TYPE = "dev.zerorec.item.deleted.v1"
HANDLED_TYPES = (BEHAVIOR_TYPE, UPSERT_TYPE, DELETE_TYPE)
CACHE_MAX = 100_000


@dataclass(frozen=True)
class Applied:
    """What happened to one event: applied now, or a duplicate (already applied)."""

    event_id: str
    event_type: str
    applied: bool

    def to_json(self) -> dict[str, Any]:
        return {"id": self.event_id, "type": self.event_type, "applied": self.applied}


class CategoryCache:
    """item_id -> categories with a TTL; bounded (cleared when full)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def get(self, item_id: str) -> tuple[str, ...] | None:
        hit = self._entries.get(item_id)
        if hit is None or hit[0] < self._clock():
            return None
        return hit[1]

    def put(self, item_id: str, categories: tuple[str, ...]) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= CACHE_MAX:
                self._entries.clear()
            self._entries[item_id] = (self._clock() + self.ttl_s, categories)

    def drop(self, item_id: str) -> None:
        with self._lock:
            self._entries.pop(item_id, None)


def behavior_from(data: dict[str, Any]) -> BehaviorEvent:
    """A validated behavior.v1 payload as a realtime.BehaviorEvent."""
    return BehaviorEvent(
        user_id=data["user_id"],
        item_id=data["item_id"],
        kind=data["kind"],
        timestamp_s=parse_timestamp(data["timestamp"]).timestamp(),
        value=data.get("value"),
    )


def item_from(data: dict[str, Any]) -> ItemRecord:
    """A validated item.upserted.v1 payload as a realtime.ItemRecord."""
    return ItemRecord(
        item_id=data["item_id"],
        title=data["title"],
        categories=tuple(data["categories"]),
        created_at_s=parse_timestamp(data["created_at"]).timestamp(),
        attributes=data["attributes"],
    )


class EventApplier:
    """Turns catalogue events into idempotent KV writes."""

    def __init__(
        self,
        kv: KVStore,
        *,
        category_cache_s: float = 10.0,
        dedupe_window_s: int = DEDUPE_WINDOW_S,
        catalogue_: SchemaCatalogue | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        """`weights`: per behaviour kind (zerorec.feedback.configured_weights); None: the defaults."""
        if dedupe_window_s <= 0:
            raise InvalidInputError(f"dedupe_window_s must be positive, got {dedupe_window_s}")
        self.kv = kv
        self.catalogue = catalogue_ or catalogue()
        self.categories = CategoryCache(category_cache_s)
        self.window_s = int(dedupe_window_s)
        self.weights = weights

    def item_categories(self, item_id: str, *, cached: bool = True) -> tuple[str, ...]:
        """The item's categories from the KV item hash (cached for behavior events)."""
        found = self.categories.get(item_id) if cached else None
        if found is None:
            (result,) = self.kv.read([item_categories_read(item_id)])
            found = categories_from(result)
            self.categories.put(item_id, found)
        return found

    def _categories_of(self, behavior: BehaviorEvent) -> tuple[str, ...]:
        """The item's categories, unless the event does not touch category state (a negative kind)."""
        return () if behavior.kind in NEGATIVE_KINDS else self.item_categories(behavior.item_id)

    def apply(self, event: CloudEvent) -> Applied:
        """Validate and apply one event; InvalidInputError for anything the consumer must refuse."""
        event_type = handled_type(event)
        validate(event, self.catalogue)
        data = event_data(event)
        token: Token = item_event_token(str(event["id"]))
        if event_type == BEHAVIOR_TYPE:
            behavior = behavior_from(data)
            ops = behavior_writes(behavior, self._categories_of(behavior), self.weights)
            token = behavior_token(behavior.user_id, str(event["id"]))
        elif event_type == UPSERT_TYPE:
            item = item_from(data)
            old = self.item_categories(item.item_id, cached=False)
            ops = _upsert_ops(item, old)
            self.categories.drop(item.item_id)
        else:
            item_id = data["item_id"]
            ops = item_delete_writes(item_id, self.item_categories(item_id, cached=False))
            self.categories.drop(item_id)
        applied = self.kv.apply_once(token, ops, self.window_s)
        return Applied(str(event["id"]), event_type, applied)

    def _behavior_ops(self, event: CloudEvent) -> tuple[Token, list[WriteOp]]:
        validate(event, self.catalogue)
        behavior = behavior_from(event_data(event))
        token = behavior_token(behavior.user_id, str(event["id"]))
        return token, behavior_writes(behavior, self._categories_of(behavior), self.weights)

    def apply_batch(self, events: Sequence[CloudEvent | InvalidInputError]) -> list[dict[str, Any]]:
        """One result per event, in order: `{"id", "type", "status": 200, "applied"}` or
        `{"status": 400|503|500, "error"}` (400: refused, dead-letter it; 503/500: retry it).
        An InvalidInputError in `events` stands for an entry that could not be decoded (400)."""
        results: list[dict[str, Any]] = [{} for _ in events]
        group: list[_Pending] = []  # the behavior events since the last item event
        for position, event in enumerate(events):
            try:
                if isinstance(event, InvalidInputError):
                    raise event
                event_type = handled_type(event)
                if event_type == BEHAVIOR_TYPE:
                    group.append(_Pending(position, str(event["id"]), *self._behavior_ops(event)))
                    continue
                self._flush(group, results)  # an item event reads state: what came before goes first
                group = []
                results[position] = {"status": 200, **self.apply(event).to_json()}
            except InvalidInputError as exc:
                results[position] = {"status": 400, "error": str(exc)}
            except BackendUnavailableError as exc:
                results[position] = {"status": 503, "error": f"key-value store unavailable: {exc}"}
        self._flush(group, results)
        return results

    def _flush(self, group: list[_Pending], results: list[dict[str, Any]]) -> None:
        if not group:
            return
        try:
            applied = self.kv.apply_many([(p.token, p.ops) for p in group], self.window_s)
        except BackendUnavailableError as exc:
            for p in group:
                results[p.position] = {"status": 503, "error": f"key-value store unavailable: {exc}"}
            return
        except InvalidInputError:
            applied = None  # one entry is refused by the KV (wrong type): find it, one by one
        for index, p in enumerate(group):
            if applied is not None:
                ok = applied[index]
            else:
                try:
                    ok = self.kv.apply_once(p.token, p.ops, self.window_s)
                except InvalidInputError as exc:
                    results[p.position] = {"status": 400, "error": str(exc)}
                    continue
                except BackendUnavailableError as exc:
                    results[p.position] = {"status": 503, "error": f"key-value store unavailable: {exc}"}
                    continue
            results[p.position] = {"status": 200, **Applied(p.event_id, BEHAVIOR_TYPE, ok).to_json()}


@dataclass(frozen=True)
class _Pending:
    """A behavior event of a batch, ready to apply."""

    position: int
    event_id: str
    token: Token
    ops: list[WriteOp]


def handled_type(event: CloudEvent) -> str:
    """The event's catalogue type if the consumer handles it, else InvalidInputError."""
    event_type = effective_type(event)
    if event_type not in HANDLED_TYPES:
        raise InvalidInputError(
            f"the consumer does not handle {event_type!r} (handles: {', '.join(HANDLED_TYPES)})"
        )
    return event_type


def _upsert_ops(item: ItemRecord, old_categories: tuple[str, ...]) -> list[WriteOp]:
    """Upsert writes, plus leaving the hot lists of categories the item no longer has."""
    gone = [c for c in old_categories if c not in item.categories]
    return item_upsert_writes(item) + [ZRem(hot_key(c), item.item_id) for c in gone]
