"""Event bus on one SQLite file: the embedded default that separate processes can share.

Kafka's model, scaled down to one machine:
- a topic has N partitions; a keyed record goes to murmur2(key) % N (Kafka's default partitioner),
  so one key's records keep their order; keyless records are spread round robin;
- `records` is an append-only log, `publish` writes a batch in one transaction and returns only after
  its COMMIT (that is the acknowledgement);
- a consumer group keeps its committed offsets per partition in `offsets`; its live members are rows
  in `members`, kept alive by each poll/commit (heartbeat). Each topic of a group is owned by ONE
  member, the oldest live one subscribed to it, which gets all of its partitions (no partition split
  between members: the simplest correct assignment). A member that closes leaves at once; one that
  crashed is dropped after `session_timeout_s` without a heartbeat, and the next member starts at
  the group's committed offsets, so uncommitted records are redelivered. A dropped member's commits
  are refused (DeliveryError), like Kafka's fenced members.
- `poll` waits up to its timeout by polling the file with short sleeps.
- retention, like Kafka's `retention.ms` and a record-count stand-in for `retention.bytes`: at most
  every `prune_every_s`, a publishing process deletes the records of the partitions it wrote that
  are older than `retention_s` or beyond the newest `retention_records`, oldest first. A consumer
  whose position was deleted goes on from the oldest record kept (Kafka's `auto.offset.reset`
  after a log truncation). SQLite reuses the freed pages, so the file stops growing.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zerorec.errors import BackendUnavailableError, DeliveryError, InvalidInputError
from zerorec.storage.bus import Consumer, EventBus, OutgoingRecord, Record
from zerorec.storage.bus_memory import _check_topic
from zerorec.storage.sqlite_base import SqliteFile

if TYPE_CHECKING:
    from zerorec.settings import Settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS partitions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    key BLOB, value BLOB NOT NULL, headers TEXT NOT NULL, timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    member_id TEXT PRIMARY KEY, grp TEXT NOT NULL, seq INTEGER NOT NULL, topics TEXT NOT NULL,
    heartbeat_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_grp ON members (grp, seq)
"""


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's `Utils.murmur2`), as a signed 32-bit int."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = data[4 * n4 :]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a keyed record: Kafka's `toPositive(murmur2(key)) % partitions`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _encode_headers(headers: Sequence[tuple[str, bytes]]) -> str:
    return json.dumps([[k, bytes(v).decode("latin-1")] for k, v in headers])


def _decode_headers(text: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((k, v.encode("latin-1")) for k, v in json.loads(text))


class SqliteEventBus(EventBus):
    """Topics, offsets and group members in a SQLite file in WAL mode."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_s: float = 5.0,
        session_timeout_s: float = 10.0,
        heartbeat_s: float = 1.0,
        retention_s: float = 7 * 24 * 3600.0,
        retention_records: int = 1_000_000,
        prune_every_s: float = 60.0,
    ) -> None:
        self._db = SqliteFile(path, _SCHEMA, busy_timeout_s=busy_timeout_s)
        self.path = self._db.path
        self.session_timeout_s = session_timeout_s
        self.heartbeat_s = heartbeat_s
        self.retention_s = retention_s
        self.retention_records = retention_records
        self.prune_every_s = prune_every_s
        self._next_prune: dict[str, float] = {}  # topic -> monotonic time of its next pruning
        self._round_robin = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteEventBus:
        """The bus at settings.bus_sqlite_file, waiting at most request_timeout_s for the lock."""
        return cls(
            settings.bus_sqlite_file,
            busy_timeout_s=settings.request_timeout_s,
            retention_s=settings.bus_retention_s,
            retention_records=settings.bus_retention_records,
        )

    def prune(self, topic: str, now_ms: int | None = None) -> int:
        """Delete `topic`'s records beyond the retention (age or count, per partition); how many."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - int(self.retention_s * 1000)

        def tx(conn: sqlite3.Connection) -> int:
            deleted = 0
            ends = conn.execute("SELECT partition, next_offset FROM partitions WHERE topic = ?", (topic,))
            for p, end in ends.fetchall():
                # Offsets grow with time: the first record young enough is found from the oldest
                # end of the partition, so the scan covers only what is about to be deleted.
                row = conn.execute(
                    "SELECT offset FROM records WHERE topic = ? AND partition = ? AND timestamp_ms >= ? "
                    "ORDER BY offset LIMIT 1",
                    (topic, p, cutoff),
                ).fetchone()
                keep_from = max(row[0] if row else end, end - self.retention_records)
                deleted += conn.execute(
                    "DELETE FROM records WHERE topic = ? AND partition = ? AND offset < ?",
                    (topic, p, keep_from),
                ).rowcount
            return deleted

        return int(self._db.run(f"retention of {topic!r}", tx, immediate=True))

    def _prune_if_due(self, topic: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next_prune.get(topic, 0.0):
                return
            self._next_prune[topic] = now + self.prune_every_s
        with contextlib.suppress(BackendUnavailableError):  # the file is busy: the next publish prunes
            self.prune(topic)

    @staticmethod
    def _create(conn: sqlite3.Connection, topic: str, partitions: int) -> int:
        """Create `topic` if missing; return its partition count."""
        n = conn.execute("SELECT COUNT(*) FROM partitions WHERE topic = ?", (topic,)).fetchone()[0]
        if n:
            return int(n)
        conn.executemany(
            "INSERT INTO partitions (topic, partition, next_offset) VALUES (?, ?, 0)",
            [(topic, p) for p in range(partitions)],
        )
        return partitions

    def ensure_topics(self, topics: Sequence[str], partitions: int = 1) -> None:
        if partitions < 1:
            raise InvalidInputError(f"partitions must be >= 1, got {partitions}")
        for t in topics:
            _check_topic(t)
        if topics:
            self._db.run(
                "ensure_topics",
                lambda conn: [self._create(conn, t, partitions) for t in topics],
                immediate=True,
            )

    def publish(self, topic: str, records: Sequence[OutgoingRecord]) -> None:
        """Append all records in one transaction; returning means committed (acknowledged)."""
        _check_topic(topic)
        if not records:
            return
        with self._lock:
            start, self._round_robin = self._round_robin, self._round_robin + len(records)

        def tx(conn: sqlite3.Connection) -> None:
            n = self._create(conn, topic, 1)  # like Kafka's auto.create.topics.enable
            next_offset = dict(
                conn.execute("SELECT partition, next_offset FROM partitions WHERE topic = ?", (topic,))
            )
            now = int(time.time() * 1000)
            rows = []
            for i, r in enumerate(records):
                p = (start + i) % n if r.key is None else partition_for(r.key, n)
                rows.append(
                    (topic, p, next_offset[p], r.key, bytes(r.value), _encode_headers(r.headers), now)
                )
                next_offset[p] += 1
            conn.executemany(
                "INSERT INTO records (topic, partition, offset, key, value, headers, timestamp_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "UPDATE partitions SET next_offset = ? WHERE topic = ? AND partition = ?",
                [(o, topic, p) for p, o in next_offset.items()],
            )

        try:
            self._db.run(f"publish to {topic!r}", tx, immediate=True)
        except Exception as exc:
            raise DeliveryError(
                f"{len(records)} records to {topic!r} were not committed to {self.path}: {exc}; "
                "none of them may be treated as sent"
            ) from exc
        self._prune_if_due(topic)  # after the acknowledgement, in a transaction of its own

    def consumer(self, topics: Sequence[str], group: str, *, from_beginning: bool = True) -> SqliteConsumer:
        if not group:
            raise InvalidInputError("consumer group must be non-empty")
        for t in topics:
            _check_topic(t)
        return SqliteConsumer(self, list(topics), group, from_beginning)

    def close(self) -> None:
        """Close this process's connection (it reopens on next use)."""
        self._db.close()


class SqliteConsumer(Consumer):
    """One member of a group on a SqliteEventBus (see the module docstring for the assignment)."""

    def __init__(self, bus: SqliteEventBus, topics: list[str], group: str, from_beginning: bool) -> None:
        self._bus = bus
        self.topics = topics
        self.group = group
        self.from_beginning = from_beginning
        self.member_id = uuid.uuid4().hex
        self.positions: dict[tuple[str, int], int] = {}  # owned partitions -> next offset to fetch
        self._owned: list[str] = []
        self._next_heartbeat = 0.0
        self._turn = 0
        self._closed = False
        self._heartbeat()

    # ---- membership ----------------------------------------------------------------------------

    def _join(self, conn: sqlite3.Connection, now: float) -> None:
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM members").fetchone()[0]
        conn.execute(
            "INSERT INTO members (member_id, grp, seq, topics, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
            (self.member_id, self.group, seq, json.dumps(self.topics), now),
        )

    def _heartbeat(self) -> None:
        """Refresh this member (rejoin if dropped), drop dead members, recompute owned topics."""

        def tx(conn: sqlite3.Connection) -> list[str]:
            now = time.time()
            conn.execute(
                "DELETE FROM members WHERE grp = ? AND heartbeat_at < ?",
                (self.group, now - self._bus.session_timeout_s),
            )
            cur = conn.execute(
                "UPDATE members SET heartbeat_at = ? WHERE member_id = ?", (now, self.member_id)
            )
            if cur.rowcount == 0:  # new, or dropped as dead: positions restart from the commits
                self._join(conn, now)
                self.positions.clear()
                self._owned = []
            owners: dict[str, str] = {}
            for member_id, topics in conn.execute(
                "SELECT member_id, topics FROM members WHERE grp = ? ORDER BY seq", (self.group,)
            ):
                for t in json.loads(topics):
                    owners.setdefault(t, member_id)
            owned = [t for t in self.topics if owners.get(t) == self.member_id]
            for t in owned:
                self._assign(conn, t, fresh=t not in self._owned)
            return owned

        owned = self._bus._db.run("consumer heartbeat", tx, immediate=True)
        for key in [k for k in self.positions if k[0] not in owned]:
            del self.positions[key]  # not assigned (anymore): forget the position
        self._owned = owned
        self._next_heartbeat = time.monotonic() + self._bus.heartbeat_s

    def _assign(self, conn: sqlite3.Connection, topic: str, *, fresh: bool) -> None:
        """Start each partition of an owned topic not fetched yet at the group's committed offset.

        A topic that does not exist yet is not created (like Kafka consumers); its partitions are
        picked up by the heartbeat after the topic appears.
        """
        committed = dict(
            conn.execute(
                "SELECT partition, next_offset FROM offsets WHERE grp = ? AND topic = ?", (self.group, topic)
            )
        )
        for p, end in conn.execute("SELECT partition, next_offset FROM partitions WHERE topic = ?", (topic,)):
            if fresh or (topic, p) not in self.positions:
                self.positions[(topic, p)] = committed.get(p, 0 if self.from_beginning else end)

    # ---- port ----------------------------------------------------------------------------------

    def _fetch(self, max_records: int) -> list[Record]:
        parts = sorted(self.positions)
        if not parts:
            return []
        self._turn = (self._turn + 1) % len(parts)
        order = parts[self._turn :] + parts[: self._turn]  # rotate so no partition starves

        def tx(conn: sqlite3.Connection) -> list[Record]:
            out: list[Record] = []
            for topic, p in order:
                rows = conn.execute(
                    "SELECT offset, key, value, headers, timestamp_ms FROM records "
                    "WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                    (topic, p, self.positions[(topic, p)], max_records - len(out)),
                ).fetchall()
                for offset, key, value, headers, ts in rows:
                    out.append(Record(topic, p, offset, bytes(value), key, _decode_headers(headers), ts))
                if rows:
                    self.positions[(topic, p)] = rows[-1][0] + 1
                if len(out) >= max_records:
                    break
            return out

        return self._bus._db.run("poll", tx, immediate=False)

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        if self._closed:
            raise InvalidInputError("consumer is closed")
        if max_records < 1:
            return []
        deadline = time.monotonic() + max(timeout_s, 0.0)
        pause = 0.005
        while True:
            if time.monotonic() >= self._next_heartbeat:
                self._heartbeat()
            out = self._fetch(max_records)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.05)

    def commit(self, records: Sequence[Record]) -> None:
        """Store offset+1 of the last record per partition; refused if this member was dropped."""
        if self._closed:
            raise InvalidInputError("consumer is closed")
        latest: dict[tuple[str, int], int] = {}
        for r in records:
            latest[(r.topic, r.partition)] = max(latest.get((r.topic, r.partition), -1), r.offset)
        if not latest:
            return

        def tx(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE members SET heartbeat_at = ? WHERE member_id = ?", (time.time(), self.member_id)
            )
            if cur.rowcount == 0:
                return False
            conn.executemany(
                "INSERT INTO offsets (grp, topic, partition, next_offset) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (grp, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(self.group, t, p, o + 1) for (t, p), o in latest.items()],
            )
            return True

        if not self._bus._db.run("commit", tx, immediate=True):
            self._next_heartbeat = 0.0  # rejoin on the next poll
            raise DeliveryError(
                f"consumer of group {self.group!r} was dropped from the group (no heartbeat for "
                f"{self._bus.session_timeout_s:.0f}s); the records will be redelivered"
            )

    def close(self) -> None:
        """Leave the group at once, so the next member takes over from the committed offsets."""
        if self._closed:
            return
        self._closed = True
        self.positions.clear()
        self._bus._db.run(
            "consumer close",
            lambda conn: conn.execute("DELETE FROM members WHERE member_id = ?", (self.member_id,)),
            immediate=True,
        )
