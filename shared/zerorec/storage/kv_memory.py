"""In-process key-value store with Redis semantics: the embedded default, no server needed."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from zerorec.errors import InvalidInputError
from zerorec.storage.kv import (
    Delete,
    Expire,
    Get,
    HGetAll,
    HIncr,
    HMGet,
    HSet,
    KVStore,
    ListPush,
    ListRange,
    ReadOp,
    RecordGet,
    RecordIncr,
    RecordPush,
    RecordToken,
    Set,
    SetAdd,
    SetMembers,
    Token,
    TokenSeen,
    WriteOp,
    ZIncr,
    ZRem,
    ZTop,
)
from zerorec.storage.kv_record import PackedRecord, check_record_op, fingerprint

T = TypeVar("T")


@dataclass
class _Entry:
    kind: str  # "string" | "hash" | "zset" | "list" | "set", as Redis TYPE names them
    value: Any
    expires_at: float | None = None


def format_float(x: float) -> str:
    """Render a float the way Redis HINCRBYFLOAT does for common values ("3", "2.5")."""
    if x == int(x) and abs(x) < 1e17:
        return str(int(x))
    return repr(x)


def check_write(op: WriteOp) -> None:
    """Refuse malformed write ops before anything is applied (shared by every backend)."""
    if not isinstance(op, WriteOp):
        raise InvalidInputError(f"not a write op: {op!r}")
    if isinstance(op, Set) and op.ttl_s is not None and op.ttl_s <= 0:
        raise InvalidInputError(f"Set.ttl_s must be positive, got {op.ttl_s}")
    if isinstance(op, ListPush) and op.maxlen < 1:
        raise InvalidInputError(f"ListPush.maxlen must be >= 1, got {op.maxlen}")
    if isinstance(op, Expire) and op.ttl_s <= 0:
        raise InvalidInputError(f"Expire.ttl_s must be positive, got {op.ttl_s}")
    if isinstance(op, RecordPush | RecordIncr):
        check_record_op(op)


def check_token(token: Token, ttl_s: int) -> None:
    """Refuse a bad token or window before anything is applied (shared by every backend)."""
    if ttl_s <= 0:
        raise InvalidInputError(f"apply_once ttl_s must be positive, got {ttl_s}")
    if isinstance(token, RecordToken):
        check_record_op(token)
    elif not isinstance(token, str) or not token:
        raise InvalidInputError(f"a token is a non-empty str or a RecordToken, got {token!r}")


class MemoryKVStore(KVStore):
    """A dict behind one lock; every batch runs under the lock, so batches are atomic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, _Entry] = {}
        self._lock = threading.RLock()
        self._clock = clock
        self._expires: list[Expire] = []

    # ---- helpers ---------------------------------------------------------------------------

    def _entry(self, key: str, kind: str) -> _Entry | None:
        e = self._data.get(key)
        if e is not None and e.expires_at is not None and e.expires_at <= self._clock():
            del self._data[key]
            e = None
        if e is not None and e.kind != kind:
            raise InvalidInputError(f"WRONGTYPE key {key!r} holds a {e.kind}, not a {kind}")
        return e

    def _container(self, key: str, kind: str, factory: Callable[[], Any]) -> Any:
        e = self._entry(key, kind)
        if e is None:
            e = self._data[key] = _Entry(kind, factory())
        return e.value

    def _drop_if_empty(self, key: str) -> None:
        e = self._data.get(key)
        if e is not None and e.kind != "string" and not e.value:
            del self._data[key]  # Redis removes empty containers

    def _read_one(self, op: ReadOp) -> Any:
        if isinstance(op, Get):
            e = self._entry(op.key, "string")
            return None if e is None else e.value
        if isinstance(op, HGetAll):
            e = self._entry(op.key, "hash")
            return {} if e is None else dict(e.value)
        if isinstance(op, HMGet):
            e = self._entry(op.key, "hash")
            h = {} if e is None else e.value
            return [h.get(f) for f in op.fields]
        if isinstance(op, ListRange):
            e = self._entry(op.key, "list")
            values = [] if e is None else e.value
            n = len(values)
            start = max(op.start + n if op.start < 0 else op.start, 0)
            stop = op.stop + n if op.stop < 0 else op.stop
            return list(values[start : stop + 1]) if stop >= start else []
        if isinstance(op, ZTop):
            e = self._entry(op.key, "zset")
            if e is None or op.n <= 0:
                return []
            ranked = sorted(e.value.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
            return [(m, float(s)) for m, s in ranked[: op.n]]
        if isinstance(op, SetMembers):
            e = self._entry(op.key, "set")
            return set() if e is None else set(e.value)
        if isinstance(op, RecordGet):
            return self._record(op.key).view()
        if isinstance(op, TokenSeen):
            token = op.token
            if isinstance(token, RecordToken):
                return self._record(token.key).remembers(fingerprint(token.id))
            return token in self._data and self._read_token(token)
        raise InvalidInputError(f"not a read op: {op!r}")

    def _record(self, key: str) -> PackedRecord:
        e = self._entry(key, "string")
        return PackedRecord.decode(None if e is None else e.value)

    def _store_record(self, key: str, rec: PackedRecord) -> None:
        e = self._entry(key, "string")
        expires = None if e is None else e.expires_at  # like SET ... KEEPTTL
        self._data[key] = _Entry("string", rec.encode(), expires)

    def _write_one(self, op: WriteOp) -> None:
        if isinstance(op, Set):
            expires = None if op.ttl_s is None else self._clock() + op.ttl_s
            self._data[op.key] = _Entry("string", op.value, expires)  # SET replaces any type
        elif isinstance(op, Delete):
            self._data.pop(op.key, None)
        elif isinstance(op, HSet):
            if op.mapping:
                self._container(op.key, "hash", dict).update(op.mapping)
        elif isinstance(op, HIncr):
            h = self._container(op.key, "hash", dict)
            try:
                current = float(h.get(op.field, "0"))
            except ValueError:
                raise InvalidInputError(f"hash field {op.key!r}/{op.field!r} is not a number") from None
            h[op.field] = format_float(current + op.amount)
        elif isinstance(op, ZIncr):
            z = self._container(op.key, "zset", dict)
            z[op.member] = z.get(op.member, 0.0) + float(op.amount)
        elif isinstance(op, ZRem):
            e = self._entry(op.key, "zset")
            if e is not None:
                e.value.pop(op.member, None)
                self._drop_if_empty(op.key)
        elif isinstance(op, ListPush):
            lst = self._container(op.key, "list", list)
            lst[:0] = list(reversed(op.values))
            del lst[op.maxlen :]
            self._drop_if_empty(op.key)
        elif isinstance(op, SetAdd) and op.members:
            self._container(op.key, "set", set).update(op.members)
        elif isinstance(op, Expire):
            self._expires.append(op)  # applied when the call's writes are done
        elif isinstance(op, RecordPush | RecordIncr):
            rec = self._record(op.key)
            rec.push(op) if isinstance(op, RecordPush) else rec.incr(op)
            self._store_record(op.key, rec)

    def _atomically(self, keys: set[str], body: Callable[[], T]) -> T:
        """Run `body` (which writes only `keys`), then the deferred Expires; on any error restore
        the keys, so the call is all or nothing."""
        saved = {key: copy.deepcopy(self._data.get(key)) for key in keys}
        self._expires = []
        try:
            result = body()
            for op in self._expires:
                e = self._data.get(op.key)
                if e is not None and (e.expires_at is None or e.expires_at > self._clock()):
                    e.expires_at = self._clock() + op.ttl_s
            return result
        except BaseException:
            for key, entry in saved.items():
                if entry is None:
                    self._data.pop(key, None)
                else:
                    self._data[key] = entry
            raise
        finally:
            self._expires = []

    def _apply(self, ops: Sequence[WriteOp]) -> None:
        """Apply all ops or none: on any error, restore the keys touched so far."""
        for op in ops:
            check_write(op)
        self._atomically({op.key for op in ops}, lambda: [self._write_one(op) for op in ops])

    def _token_applied(self, token: Token, ttl_s: int) -> bool:
        if isinstance(token, RecordToken):
            return self._record(token.key).has_token(fingerprint(token.id), int(self._clock()), ttl_s)
        return token in self._data and self._read_token(token)

    def _remember(self, token: Token, ttl_s: int) -> None:
        if isinstance(token, RecordToken):
            rec = self._record(token.key)
            rec.add_token(fingerprint(token.id), int(self._clock()), ttl_s)
            self._store_record(token.key, rec)
        else:
            self._data[token] = _Entry("string", "1", self._clock() + ttl_s)

    # ---- port ------------------------------------------------------------------------------

    def read(self, ops: Sequence[ReadOp]) -> list:
        with self._lock:
            return [self._read_one(op) for op in ops]

    def write(self, ops: Sequence[WriteOp]) -> None:
        with self._lock:
            self._apply(ops)

    def apply_once(self, token: Token, ops: Sequence[WriteOp], ttl_s: int = 7 * 24 * 3600) -> bool:
        return self.apply_many([(token, ops)], ttl_s)[0]

    def apply_many(
        self, batch: Sequence[tuple[Token, Sequence[WriteOp]]], ttl_s: int = 7 * 24 * 3600
    ) -> list[bool]:
        """Every entry under one lock; all or nothing over the batch (keys restored on error)."""
        for token, ops in batch:
            check_token(token, ttl_s)
            for op in ops:
                check_write(op)
        keys = {op.key for _, ops in batch for op in ops}
        keys |= {t.key if isinstance(t, RecordToken) else t for t, _ in batch}

        def body() -> list[bool]:
            results: list[bool] = []
            for token, ops in batch:
                if self._token_applied(token, ttl_s):
                    results.append(False)
                    continue
                for op in ops:
                    self._write_one(op)
                self._remember(token, ttl_s)  # only after every op succeeded
                results.append(True)
            return results

        with self._lock:
            return self._atomically(keys, body)

    def _read_token(self, token: str) -> bool:
        e = self._data.get(token)
        if e is not None and e.expires_at is not None and e.expires_at <= self._clock():
            del self._data[token]
            return False
        return e is not None
