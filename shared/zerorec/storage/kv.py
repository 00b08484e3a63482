"""Key-value / feature store port: user histories, seen sets, popularity counters, item metadata.

Operations are small command objects so a whole batch goes to the server in one round trip
(`read`, a pipeline) or one atomic step (`write`, `apply_once`, a transaction).
Backends: `SqliteKVStore` (a file shared by processes, the embedded default), `MemoryKVStore`
(in-process) and `RedisKVStore` (one server, or a Redis Cluster).
All keys, members and fields are str; stored values are str; scores are float.

Records (`RecordPush`, `RecordIncr`, `RecordGet`, `RecordToken`) pack small capped lists, capped
counter maps and an idempotency window into ONE string value (`zerorec.storage.kv_record` has the
format): one key per user instead of one per list, hash and event, because at 200M users Redis's
~100 bytes of per-key overhead would be most of the memory. `Expire` bounds what is left idle.

Redis Cluster: keys sharing a hash tag (`{...}`) share a slot. A `write` / `apply_*` call is atomic
per slot; `RecordToken`s and the ops in their record's slot apply exactly once, atomically; ops of
other slots in the same entry apply right after, only if the entry was applied (see kv_redis).
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


@dataclass(frozen=True)
class RecordGet:
    """-> Record: the lists and counter maps of the record at `key` (empty if missing)"""

    key: str


@dataclass(frozen=True)
class RecordToken:
    """An idempotency token kept in the dedupe window of the record at `key` (not a key of its own).

    The window keeps a 60-bit fingerprint of `id` (10 characters): an id is remembered for at least
    `ttl_s` (apply_once's window) after it was applied, and until the record has seen writes in two
    windows since, so a redelivery after an outage of any length, which arrives before the user's
    newer events, is still caught. A new id is taken for a duplicate with a probability of
    (ids in the window) / 2**60 (about 1e-17 for 20 ids)."""

    key: str
    id: str


Token = str | RecordToken


@dataclass(frozen=True)
class TokenSeen:
    """-> bool: whether `token` was applied (a plain token within its TTL; a record token while
    its record's window remembers it)"""

    token: Token


@dataclass(frozen=True)
class Record:
    """What RecordGet returns: lists newest first, counters as floats."""

    lists: dict[str, list[str]] = field(default_factory=dict)
    counters: dict[str, dict[str, float]] = field(default_factory=dict)


ReadOp = Get | HGetAll | HMGet | ListRange | ZTop | SetMembers | RecordGet | TokenSeen

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


@dataclass(frozen=True)
class Expire:
    """Set `key`'s time to live to `ttl_s` once every write of the call is done (no-op if the key
    does not exist then): a record created by the same call gets it too."""

    key: str
    ttl_s: int


@dataclass(frozen=True)
class RecordPush:
    """Put `value` first in list `section` of the record at `key` (an earlier occurrence moves to the
    front: the list holds distinct values, newest first) and keep at most `maxlen`."""

    key: str
    section: str
    value: str
    maxlen: int


@dataclass(frozen=True)
class RecordIncr:
    """Add `amount` to counter `member` of map `section` of the record at `key` (stored with 6
    significant digits); keep the `maxlen` largest counters (ties: the oldest member goes)."""

    key: str
    section: str
    member: str
    amount: float
    maxlen: int


WriteOp = Set | Delete | HSet | HIncr | ZIncr | ZRem | ListPush | SetAdd | Expire | RecordPush | RecordIncr


class KVStore(ABC):
    """Batched reads and atomic writes over a shared key-value server."""

    @abstractmethod
    def read(self, ops: Sequence[ReadOp]) -> list:
        """Run every read in one round trip; results come back in the order of `ops`."""

    @abstractmethod
    def write(self, ops: Sequence[WriteOp]) -> None:
        """Apply every write atomically (all or nothing) in one round trip."""

    @abstractmethod
    def apply_once(self, token: Token, ops: Sequence[WriteOp], ttl_s: int = 7 * 24 * 3600) -> bool:
        """Apply `ops` atomically unless `token` was applied before (within `ttl_s`).

        Returns True if applied now, False if it was a duplicate. This is what makes consumers
        idempotent by event id: a redelivered event never double counts. A plain token is a key
        of its own kept `ttl_s`; a RecordToken lives in its record's window of `ttl_s`.
        """

    def apply_many(
        self, batch: Sequence[tuple[Token, Sequence[WriteOp]]], ttl_s: int = 7 * 24 * 3600
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
