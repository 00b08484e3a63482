"""Retention of the embedded (SQLite) bus: old records and those beyond the per-partition count are
deleted, a consumer behind the retention goes on from the oldest record kept, the file stops growing."""

from __future__ import annotations

import time
from pathlib import Path

from zerorec.settings import Settings
from zerorec.storage.bus import OutgoingRecord
from zerorec.storage.bus_sqlite import SqliteEventBus


def _publish(bus: SqliteEventBus, topic: str, n: int, start: int = 0) -> None:
    bus.publish(topic, [OutgoingRecord(f"v{i}".encode() * 50) for i in range(start, start + n)])


def _offsets(bus: SqliteEventBus, topic: str) -> list[int]:
    consumer = bus.consumer([topic], f"g{time.monotonic_ns()}")
    try:
        return [r.offset for r in consumer.poll(100_000, 0.2)]
    finally:
        consumer.close()


def test_count_retention_keeps_the_newest_and_a_lagging_consumer_goes_on(tmp_path: Path) -> None:
    bus = SqliteEventBus(tmp_path / "bus.sqlite3", retention_records=100, prune_every_s=0)
    bus.ensure_topics(["t"])
    behind = bus.consumer(["t"], "slow")
    _publish(bus, "t", 10)
    assert [r.offset for r in behind.poll(5, 0.2)] == [0, 1, 2, 3, 4]
    _publish(bus, "t", 300, start=10)
    assert _offsets(bus, "t") == list(range(210, 310))  # the newest 100 of 310
    got = behind.poll(1000, 0.2)  # its next offset (5) is gone: it goes on from the oldest kept
    assert [r.offset for r in got] == list(range(210, 310))
    behind.close()


def test_age_retention_and_the_file_stops_growing(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    bus = SqliteEventBus(path, retention_s=3600, retention_records=10**9, prune_every_s=0)
    _publish(bus, "t", 50)
    assert bus.prune("t", now_ms=int(time.time() * 1000) + 3_601_000) == 50  # an hour later: all old
    assert _offsets(bus, "t") == []
    sizes = []
    tight = SqliteEventBus(path, retention_records=500, prune_every_s=0)
    for round_ in range(12):  # a steady stream with count retention: the file reuses freed pages
        for k in range(5):
            _publish(tight, "t", 200, start=round_ * 1000 + k * 200)
        sizes.append(path.stat().st_size + Path(f"{path}-wal").stat().st_size)
    assert len(_offsets(bus, "t")) == 500
    # ~0.7 MB a round without retention; with it, flat once the WAL reached its checkpoint size
    assert sizes[-1] <= sizes[6] * 1.1, sizes


def test_retention_comes_from_settings(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, bus_retention_s=60, bus_retention_records=7)
    bus = SqliteEventBus.from_settings(s)
    assert (bus.retention_s, bus.retention_records) == (60, 7)
