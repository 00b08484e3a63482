"""Event bus port: behavior and item events flow through topics.

Backends: `SqliteEventBus` (a file shared by processes, the embedded default), `MemoryEventBus`
(in-process) and `KafkaEventBus` (confluent-kafka). `publish` returns only once the broker (or the
SQLite COMMIT) acknowledged every record, and raises DeliveryError otherwise; consumers commit
explicitly after processing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OutgoingRecord:
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)
    timestamp_ms: int = 0


class Consumer(ABC):
    """A member of a consumer group; offsets advance only through `commit`."""

    @abstractmethod
    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Return up to `max_records` records, waiting at most `timeout_s` for the first."""

    @abstractmethod
    def commit(self, records: Sequence[Record]) -> None:
        """Mark `records` (and everything before them in their partitions) as processed."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group; uncommitted records will be redelivered to the next member."""


class EventBus(ABC):
    @abstractmethod
    def ensure_topics(self, topics: Sequence[str], partitions: int = 1) -> None:
        """Create the topics if they do not exist yet."""

    @abstractmethod
    def publish(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        """Produce `records` and wait until all are acknowledged; raise DeliveryError if any is not."""

    @abstractmethod
    def consumer(self, topics: Sequence[str], group: str, *, from_beginning: bool = True) -> Consumer:
        """Join consumer group `group` on `topics`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release connections."""
