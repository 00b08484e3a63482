"""In-process event bus with Kafka's group semantics: the embedded default, no server needed.

Each topic has one partition. Within a group, a topic is assigned to one live consumer at a time
(the oldest member); a consumer that gains a topic starts at the group's committed offset, so
records polled but not committed are redelivered after `close`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from zerorec.errors import InvalidInputError
from zerorec.storage.bus import Consumer, EventBus, OutgoingRecord, Record


def _check_topic(topic: str) -> None:
    if not topic or len(topic) > 249 or not all(c.isalnum() or c in "._-" for c in topic):
        raise InvalidInputError(f"invalid topic name {topic!r} (letters, digits, '.', '_', '-')")


class MemoryEventBus(EventBus):
    """Topics are in-memory logs guarded by one condition variable."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._logs: dict[str, list[Record]] = {}
        self._committed: dict[tuple[str, str], int] = {}  # (group, topic) -> next offset
        self._members: dict[str, list[MemoryConsumer]] = {}  # group -> live consumers, oldest first

    def ensure_topics(self, topics: Sequence[str], partitions: int = 1) -> None:
        with self._cond:
            for t in topics:
                _check_topic(t)
                self._logs.setdefault(t, [])

    def publish(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        _check_topic(topic)
        with self._cond:
            log = self._logs.setdefault(topic, [])  # like Kafka's auto.create.topics.enable
            now = int(time.time() * 1000)
            for r in records:
                log.append(Record(topic, 0, len(log), bytes(r.value), r.key, tuple(r.headers), now))
            self._cond.notify_all()

    def consumer(self, topics: Sequence[str], group: str, *, from_beginning: bool = True) -> MemoryConsumer:
        if not group:
            raise InvalidInputError("consumer group must be non-empty")
        for t in topics:
            _check_topic(t)
        with self._cond:
            c = MemoryConsumer(self, list(topics), group, from_beginning)
            self._members.setdefault(group, []).append(c)
            return c

    # ---- used by MemoryConsumer, always under self._cond --------------------------------------

    def _owner(self, group: str, topic: str) -> MemoryConsumer | None:
        for c in self._members.get(group, ()):
            if topic in c.topics:
                return c
        return None

    def _fetch(self, c: MemoryConsumer, max_records: int) -> list[Record]:
        out: list[Record] = []
        for t in c.topics:
            if self._owner(c.group, t) is not c:
                c.positions.pop(t, None)  # not assigned (anymore): forget the position
                continue
            log = self._logs.setdefault(t, [])
            if t not in c.positions:
                default = 0 if c.from_beginning else len(log)
                c.positions[t] = self._committed.get((c.group, t), default)
            pos = c.positions[t]
            take = log[pos : pos + max_records - len(out)]
            c.positions[t] = pos + len(take)
            out.extend(take)
            if len(out) >= max_records:
                break
        return out


class MemoryConsumer(Consumer):
    """One member of a group on a MemoryEventBus."""

    def __init__(self, bus: MemoryEventBus, topics: list[str], group: str, from_beginning: bool) -> None:
        self._bus = bus
        self.topics = topics
        self.group = group
        self.from_beginning = from_beginning
        self.positions: dict[str, int] = {}
        self._closed = False

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        if self._closed:
            raise InvalidInputError("consumer is closed")
        if max_records < 1:
            return []
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._bus._cond:
            while True:
                out = self._bus._fetch(self, max_records)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._bus._cond.wait(remaining)

    def commit(self, records: Sequence[Record]) -> None:
        if self._closed:
            raise InvalidInputError("consumer is closed")
        latest: dict[str, int] = {}
        for r in records:
            latest[r.topic] = max(latest.get(r.topic, -1), r.offset)
        with self._bus._cond:
            for topic, offset in latest.items():
                self._bus._committed[(self.group, topic)] = offset + 1

    def close(self) -> None:
        with self._bus._cond:
            if self._closed:
                return
            self._closed = True
            members = self._bus._members.get(self.group, [])
            if self in members:
                members.remove(self)
            self._bus._cond.notify_all()
