"""Key-value / feature store port: user histories, seen sets, popularity counters, item metadata.

Operations are small command objects so a whole batch goes to the server in one round trip
(`read`, a pipeline) or one atomic step (`write`, `apply_once`, a transaction).
Backends: `SqliteKVStore` (a file shared by processes, the embedded default), `MemoryKVStore`
(in-process) and `RedisKVStore`.
All keys, members and fields are str; stored values are str; scores are float.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

# ---- reads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Get:
    """-> str | None"""

    key: str


@dataclass(frozen=True)
class HGetAll:
    """-> dict[str, str] (empty if missing)"""

    key: str


@dataclass(frozen=True)
class HMGet:
    """-> list[str | None], one per field"""

    key: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class ListRange:
    """-> list[str], newest first for lists built with ListPush; `stop` is inclusive, -1 = end"""

    key: str
    start: int = 0
    stop: int = -1


@dataclass(frozen=True)
class ZTop:
    """-> list[tuple[str, float]], the `n` highest-scored members, best first"""

    key: str
    n: int


@dataclass(frozen=True)
class SetMembers:
    """-> set[str]"""

    key: str


ReadOp = Get | HGetAll | HMGet | ListRange | ZTop | SetMembers

# ---- writes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Set:
    key: str
    value: str
    ttl_s: int | None = None


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class HSet:
    key: str
    mapping: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HIncr:
    key: str
    field: str
    amount: float


@dataclass(frozen=True)
class ZIncr:
    key: str
    member: str
    amount: float


@dataclass(frozen=True)
class ZRem:
    key: str
    member: str


@dataclass(frozen=True)
class ListPush:
    """Push `values` to the head (last value ends up first) and keep at most `maxlen` entries."""

    key: str
    values: tuple[str, ...]
    maxlen: int


@dataclass(frozen=True)
class SetAdd:
    key: str
    members: tuple[str, ...]


WriteOp = Set | Delete | HSet | HIncr | ZIncr | ZRem | ListPush | SetAdd


class KVStore(ABC):
    """Batched reads and atomic writes over a shared key-value server."""

    @abstractmethod
    def read(self, ops: Sequence[ReadOp]) -> list:
        """Run every read in one round trip; results come back in the order of `ops`."""

    @abstractmethod
    def write(self, ops: Sequence[WriteOp]) -> None:
        """Apply every write atomically (all or nothing) in one round trip."""

    @abstractmethod
    def apply_once(self, token: str, ops: Sequence[WriteOp], ttl_s: int = 7 * 24 * 3600) -> bool:
        """Apply `ops` atomically unless `token` was applied before (within `ttl_s`).

        Returns True if applied now, False if it was a duplicate. This is what makes consumers
        idempotent by event id: a redelivered event never double counts.
        """

    def apply_many(
        self, batch: Sequence[tuple[str, Sequence[WriteOp]]], ttl_s: int = 7 * 24 * 3600
    ) -> list[bool]:
        """`apply_once` for each `(token, ops)` in order, in ONE round trip where the backend can.

        Per entry: True if applied now, False if its token was applied before (or earlier in this
        batch). Atomic over the whole batch in every backend here: an invalid op (wrong type, not a
        number) raises InvalidInputError and nothing of the batch is applied. This default is the
        plain loop (exactly once per token, not atomic over the batch); backends override it.
        """
        return [self.apply_once(token, ops, ttl_s) for token, ops in batch]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
