"""Shared plumbing of the SQLite embedded backends: one connection per process, WAL, bounded waits.

SQLite in WAL mode lets many processes on one machine share a file: readers never block, one writer
at a time, and `busy_timeout` makes a writer wait (bounded) for the lock instead of failing at once.
`synchronous=NORMAL` keeps every committed transaction across a process crash (the failure mode of
local runs); only an OS crash or power loss may drop the last commits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from zerorec.errors import BackendUnavailableError

T = TypeVar("T")


class SqliteFile:
    """One connection to `path` per process (reopened after fork), used under a lock."""

    def __init__(self, path: str | Path, schema: str, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._schema = schema
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        with self.transaction(immediate=True) as conn:
            self._create(conn)

    def _create(self, conn: sqlite3.Connection) -> None:
        for statement in self._schema.split(";"):
            if statement.strip():
                conn.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        deadline = time.monotonic() + self.busy_timeout_s
        while True:  # switching to WAL needs a moment of exclusive access; others may hold the file
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise BackendUnavailableError(f"sqlite file {self.path} cannot use WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self._conn = self._connect()  # a connection must never cross a fork
            self._pid = os.getpid()
        return self._conn

    @contextmanager
    def transaction(self, *, immediate: bool) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE (takes the write lock now) or BEGIN (a read snapshot); COMMIT or ROLLBACK."""
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            except sqlite3.Error as exc:
                raise self.unavailable("begin", exc) from exc
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self.unavailable("commit", exc) from exc

    def run(self, what: str, fn: Callable[[sqlite3.Connection], T], *, immediate: bool) -> T:
        """`fn(conn)` inside one transaction; SQLite errors become BackendUnavailableError."""
        try:
            with self.transaction(immediate=immediate) as conn:
                return fn(conn)
        except sqlite3.Error as exc:
            raise self.unavailable(what, exc) from exc

    def unavailable(self, what: str, exc: sqlite3.Error) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"sqlite file {self.path} failed during {what}: {type(exc).__name__}: {exc} "
            f"(busy_timeout {self.busy_timeout_s:.0f}s)"
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
