"""Key-value store on one SQLite file: the embedded default that several processes can share.

Redis semantics (the same as MemoryKVStore, checked by the same contract suite) over normalised
tables, so an op touches only its own rows: a ZIncr on a 10k-member hot list is one upsert, and
ZTop is an index scan. `keys` holds each key's type (and a string's value and TTL); containers live
in one table per type. Reads run in one read transaction (a consistent snapshot), every `write` /
`apply_once` in one BEGIN IMMEDIATE transaction, so batches are atomic across processes.
TTLs use wall-clock time, since processes do not share a monotonic clock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from zerorec.storage.kv_memory import check_token, check_write, format_float
from zerorec.storage.kv_record import PackedRecord, fingerprint
from zerorec.storage.sqlite_base import SqliteFile

if TYPE_CHECKING:
    from zerorec.settings import Settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT, expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_expiry ON keys (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS hashes (
    key TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (key, field)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS zsets (
    key TEXT NOT NULL, member TEXT NOT NULL, score REAL NOT NULL, PRIMARY KEY (key, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS zsets_rank ON zsets (key, score DESC, member DESC);
CREATE TABLE IF NOT EXISTS lists (
    key TEXT NOT NULL, pos INTEGER NOT NULL, value TEXT NOT NULL, PRIMARY KEY (key, pos)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sets (
    key TEXT NOT NULL, member TEXT NOT NULL, PRIMARY KEY (key, member)
) WITHOUT ROWID
"""

_CONTAINERS = {"hash": "hashes", "zset": "zsets", "list": "lists", "set": "sets"}
_PURGE_EVERY = 1000  # writes between sweeps of expired keys


class SqliteKVStore(KVStore):
    """A KVStore on a SQLite file in WAL mode; safe to share between processes on one machine."""

    def __init__(
        self, path: str | Path, *, busy_timeout_s: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = SqliteFile(path, _SCHEMA, busy_timeout_s=busy_timeout_s)
        self.path = self._db.path
        self._clock = clock
        self._writes = 0
        self._expires: list[Expire] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteKVStore:
        """The store at settings.kv_sqlite_file, waiting at most request_timeout_s for the lock."""
        return cls(settings.kv_sqlite_file, busy_timeout_s=settings.request_timeout_s)

    # ---- key metadata --------------------------------------------------------------------------

    def _kind(self, conn: sqlite3.Connection, key: str, want: str | None = None) -> str | None:
        """The live type of `key` (None if missing or expired); WRONGTYPE unless it is `want`."""
        row = conn.execute("SELECT kind, expires_at FROM keys WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= self._clock()):
            return None
        if want is not None and row[0] != want:
            raise InvalidInputError(f"WRONGTYPE key {key!r} holds a {row[0]}, not a {want}")
        return row[0]

    def _drop(self, conn: sqlite3.Connection, key: str) -> None:
        row = conn.execute("SELECT kind FROM keys WHERE key = ?", (key,)).fetchone()
        if row is None:
            return
        conn.execute("DELETE FROM keys WHERE key = ?", (key,))
        if row[0] in _CONTAINERS:
            conn.execute(f"DELETE FROM {_CONTAINERS[row[0]]} WHERE key = ?", (key,))

    def _container(self, conn: sqlite3.Connection, key: str, kind: str) -> None:
        """Make `key` an (existing or new, empty) container of `kind`."""
        if self._kind(conn, key, kind) is None:
            self._drop(conn, key)  # an expired string may still hold the row
            conn.execute("INSERT INTO keys (key, kind) VALUES (?, ?)", (key, kind))

    def _drop_if_empty(self, conn: sqlite3.Connection, key: str, kind: str) -> None:
        table = _CONTAINERS[kind]
        if conn.execute(f"SELECT 1 FROM {table} WHERE key = ? LIMIT 1", (key,)).fetchone() is None:
            conn.execute("DELETE FROM keys WHERE key = ?", (key,))  # Redis removes empty containers

    # ---- reads ---------------------------------------------------------------------------------

    def _read_one(self, conn: sqlite3.Connection, op: ReadOp) -> Any:
        if isinstance(op, Get):
            if self._kind(conn, op.key, "string") is None:
                return None
            return conn.execute("SELECT value FROM keys WHERE key = ?", (op.key,)).fetchone()[0]
        if isinstance(op, HGetAll):
            if self._kind(conn, op.key, "hash") is None:
                return {}
            return dict(conn.execute("SELECT field, value FROM hashes WHERE key = ?", (op.key,)))
        if isinstance(op, HMGet):
            if not op.fields or self._kind(conn, op.key, "hash") is None:
                return [None] * len(op.fields)
            marks = ",".join("?" * len(set(op.fields)))
            found = dict(
                conn.execute(
                    f"SELECT field, value FROM hashes WHERE key = ? AND field IN ({marks})",
                    (op.key, *set(op.fields)),
                )
            )
            return [found.get(f) for f in op.fields]
        if isinstance(op, ListRange):
            if self._kind(conn, op.key, "list") is None:
                return []
            n = conn.execute("SELECT COUNT(*) FROM lists WHERE key = ?", (op.key,)).fetchone()[0]
            start = max(op.start + n if op.start < 0 else op.start, 0)
            stop = min(op.stop + n if op.stop < 0 else op.stop, n - 1)
            if stop < start:
                return []
            rows = conn.execute(
                "SELECT value FROM lists WHERE key = ? ORDER BY pos LIMIT ? OFFSET ?",
                (op.key, stop - start + 1, start),
            )
            return [r[0] for r in rows]
        if isinstance(op, ZTop):
            if op.n <= 0 or self._kind(conn, op.key, "zset") is None:
                return []
            rows = conn.execute(
                "SELECT member, score FROM zsets WHERE key = ? ORDER BY score DESC, member DESC LIMIT ?",
                (op.key, op.n),
            )
            return [(m, float(s)) for m, s in rows]
        if isinstance(op, SetMembers):
            if self._kind(conn, op.key, "set") is None:
                return set()
            return {r[0] for r in conn.execute("SELECT member FROM sets WHERE key = ?", (op.key,))}
        if isinstance(op, RecordGet):
            return self._record(conn, op.key).view()
        if isinstance(op, TokenSeen):
            if isinstance(op.token, RecordToken):
                return self._record(conn, op.token.key).remembers(fingerprint(op.token.id))
            return self._kind(conn, op.token) is not None
        raise InvalidInputError(f"not a read op: {op!r}")

    def _record(self, conn: sqlite3.Connection, key: str) -> PackedRecord:
        if self._kind(conn, key, "string") is None:
            return PackedRecord()
        return PackedRecord.decode(conn.execute("SELECT value FROM keys WHERE key = ?", (key,)).fetchone()[0])

    def _store_record(self, conn: sqlite3.Connection, key: str, rec: PackedRecord) -> None:
        """Write the record back, keeping the key's TTL (SET ... KEEPTTL)."""
        if self._kind(conn, key, "string") is None:
            self._drop(conn, key)
            conn.execute("INSERT INTO keys (key, kind, value) VALUES (?, 'string', ?)", (key, rec.encode()))
        else:
            conn.execute("UPDATE keys SET value = ? WHERE key = ?", (rec.encode(), key))

    # ---- writes --------------------------------------------------------------------------------

    def _write_one(self, conn: sqlite3.Connection, op: WriteOp) -> None:
        if isinstance(op, Set):
            self._drop(conn, op.key)  # SET replaces any type and clears any TTL
            expires = None if op.ttl_s is None else self._clock() + op.ttl_s
            conn.execute(
                "INSERT INTO keys (key, kind, value, expires_at) VALUES (?, 'string', ?, ?)",
                (op.key, op.value, expires),
            )
        elif isinstance(op, Delete):
            self._drop(conn, op.key)
        elif isinstance(op, HSet):
            if op.mapping:
                self._container(conn, op.key, "hash")
                conn.executemany(
                    "INSERT OR REPLACE INTO hashes (key, field, value) VALUES (?, ?, ?)",
                    [(op.key, f, v) for f, v in op.mapping.items()],
                )
        elif isinstance(op, HIncr):
            self._container(conn, op.key, "hash")
            row = conn.execute(
                "SELECT value FROM hashes WHERE key = ? AND field = ?", (op.key, op.field)
            ).fetchone()
            try:
                current = float(row[0]) if row else 0.0
            except ValueError:
                raise InvalidInputError(f"hash field {op.key!r}/{op.field!r} is not a number") from None
            conn.execute(
                "INSERT OR REPLACE INTO hashes (key, field, value) VALUES (?, ?, ?)",
                (op.key, op.field, format_float(current + op.amount)),
            )
        elif isinstance(op, ZIncr):
            self._container(conn, op.key, "zset")
            conn.execute(
                "INSERT INTO zsets (key, member, score) VALUES (?, ?, ?) "
                "ON CONFLICT (key, member) DO UPDATE SET score = score + excluded.score",
                (op.key, op.member, float(op.amount)),
            )
        elif isinstance(op, ZRem):
            if self._kind(conn, op.key, "zset") is not None:
                conn.execute("DELETE FROM zsets WHERE key = ? AND member = ?", (op.key, op.member))
                self._drop_if_empty(conn, op.key, "zset")
        elif isinstance(op, ListPush):
            self._push(conn, op)
        elif isinstance(op, SetAdd) and op.members:
            self._container(conn, op.key, "set")
            conn.executemany(
                "INSERT OR IGNORE INTO sets (key, member) VALUES (?, ?)", [(op.key, m) for m in op.members]
            )
        elif isinstance(op, Expire):
            self._expires.append(op)  # applied when the call's writes are done
        elif isinstance(op, RecordPush | RecordIncr):
            rec = self._record(conn, op.key)
            rec.push(op) if isinstance(op, RecordPush) else rec.incr(op)
            self._store_record(conn, op.key, rec)

    def _push(self, conn: sqlite3.Connection, op: ListPush) -> None:
        """Head positions decrease, so ORDER BY pos is newest first; then trim to `maxlen`."""
        self._container(conn, op.key, "list")
        head = conn.execute("SELECT MIN(pos) FROM lists WHERE key = ?", (op.key,)).fetchone()[0]
        head = 0 if head is None else head
        conn.executemany(
            "INSERT INTO lists (key, pos, value) VALUES (?, ?, ?)",
            [(op.key, head - 1 - i, v) for i, v in enumerate(op.values)],
        )
        conn.execute(
            "DELETE FROM lists WHERE key = ? AND pos >= "
            "(SELECT pos FROM lists WHERE key = ? ORDER BY pos LIMIT 1 OFFSET ?)",
            (op.key, op.key, op.maxlen),
        )
        self._drop_if_empty(conn, op.key, "list")

    def _apply(self, conn: sqlite3.Connection, ops: Sequence[WriteOp]) -> None:
        for op in ops:
            self._write_one(conn, op)
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            now = self._clock()
            for table in _CONTAINERS.values():
                conn.execute(
                    f"DELETE FROM {table} WHERE key IN "
                    "(SELECT key FROM keys WHERE expires_at IS NOT NULL AND expires_at <= ?)",
                    (now,),
                )
            conn.execute("DELETE FROM keys WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))

    def _transaction(self, what: str, conn_body: Callable[[sqlite3.Connection], Any]) -> Any:
        """One BEGIN IMMEDIATE transaction: `conn_body`, then the deferred Expires of the call
        (`self._expires` is safe to share: a process runs one transaction at a time, under the
        file's lock)."""

        def tx(conn: sqlite3.Connection) -> Any:
            self._expires = []
            result = conn_body(conn)
            now = self._clock()
            for op in self._expires:
                if self._kind(conn, op.key) is not None:
                    conn.execute("UPDATE keys SET expires_at = ? WHERE key = ?", (now + op.ttl_s, op.key))
            self._expires = []
            return result

        return self._db.run(what, tx, immediate=True)

    def _token_applied(self, conn: sqlite3.Connection, token: Token, ttl_s: int) -> bool:
        if isinstance(token, RecordToken):
            rec = self._record(conn, token.key)
            return rec.has_token(fingerprint(token.id), int(self._clock()), ttl_s)
        return self._kind(conn, token) is not None

    def _remember(self, conn: sqlite3.Connection, token: Token, ttl_s: int) -> None:
        if isinstance(token, RecordToken):
            rec = self._record(conn, token.key)
            rec.add_token(fingerprint(token.id), int(self._clock()), ttl_s)
            self._store_record(conn, token.key, rec)
        else:
            self._write_one(conn, Set(token, "1", ttl_s))

    # ---- port ----------------------------------------------------------------------------------

    def read(self, ops: Sequence[ReadOp]) -> list:
        if not ops:
            return []
        return self._db.run("read", lambda conn: [self._read_one(conn, op) for op in ops], immediate=False)

    def write(self, ops: Sequence[WriteOp]) -> None:
        for op in ops:
            check_write(op)
        if ops:
            self._transaction("write", lambda conn: self._apply(conn, ops))

    def apply_once(self, token: Token, ops: Sequence[WriteOp], ttl_s: int = 7 * 24 * 3600) -> bool:
        return self._apply_batch(f"apply_once {token!r}", [(token, ops)], ttl_s)[0]

    def apply_many(
        self, batch: Sequence[tuple[Token, Sequence[WriteOp]]], ttl_s: int = 7 * 24 * 3600
    ) -> list[bool]:
        """Every entry in one BEGIN IMMEDIATE transaction: all or nothing over the batch."""
        return self._apply_batch(f"apply_many ({len(batch)} entries)", batch, ttl_s)

    def _apply_batch(
        self, what: str, batch: Sequence[tuple[Token, Sequence[WriteOp]]], ttl_s: int
    ) -> list[bool]:
        for token, ops in batch:
            check_token(token, ttl_s)
            for op in ops:
                check_write(op)

        def tx(conn: sqlite3.Connection) -> list[bool]:
            results = []
            for token, ops in batch:
                if self._token_applied(conn, token, ttl_s):
                    results.append(False)
                    continue
                self._apply(conn, ops)
                self._remember(conn, token, ttl_s)  # only after every op succeeded
                results.append(True)
            return results

        return self._transaction(what, tx) if batch else []

    def close(self) -> None:
        """Close this process's connection (it reopens on next use)."""
        self._db.close()
