"""Storage ports and the factories that pick a backend from Settings.

The embedded backends need nothing installed: a local directory, and a KV store and event bus on
SQLite files under data_dir (the default), which separate processes on one machine share, or
in-process ones (`memory`, shared by everything in one process only, for single-process tests).
The real ones (S3, Redis, Kafka) are imported only when selected.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from zerorec.settings import Settings, get_settings
from zerorec.storage.bus import Consumer, EventBus, OutgoingRecord, Record
from zerorec.storage.kv import KVStore
from zerorec.storage.objects import ObjectStore, validate_key

__all__ = [
    "Consumer",
    "EventBus",
    "KVStore",
    "ObjectStore",
    "OutgoingRecord",
    "Record",
    "event_bus",
    "kv_store",
    "object_store",
    "validate_key",
]

_lock = threading.Lock()
_embedded: dict[str, object] = {}


def object_store(settings: Settings | None = None) -> ObjectStore:
    """The configured object store: `local` (settings.objects_dir) or `s3`."""
    s = settings or get_settings()
    if s.object_store == "s3":
        from zerorec.storage.objects_s3 import S3ObjectStore

        return S3ObjectStore.from_settings(s)
    from zerorec.storage.objects_local import LocalObjectStore

    return LocalObjectStore(s.objects_dir)


def _embedded_once(key: str, build: Callable[[], object]) -> object:
    """One embedded store per key and process: every caller in a process shares it."""
    with _lock:
        if key not in _embedded:
            _embedded[key] = build()
        return _embedded[key]


def kv_store(settings: Settings | None = None) -> KVStore:
    """The configured KV store: `sqlite` (one per file and process), `memory` (one per process), `redis`."""
    s = settings or get_settings()
    if s.kv_store == "redis":
        from zerorec.storage.kv_redis import RedisKVStore

        return RedisKVStore.from_settings(s)
    if s.kv_store == "sqlite":
        from zerorec.storage.kv_sqlite import SqliteKVStore

        kv = _embedded_once(f"kv:{s.kv_sqlite_file.resolve()}", lambda: SqliteKVStore.from_settings(s))
    else:
        from zerorec.storage.kv_memory import MemoryKVStore

        kv = _embedded_once("kv", MemoryKVStore)
    assert isinstance(kv, KVStore)
    return kv


def event_bus(settings: Settings | None = None) -> EventBus:
    """The configured event bus: `sqlite` (one per file and process), `memory` (one per process), `kafka`."""
    s = settings or get_settings()
    if s.event_bus == "kafka":
        from zerorec.storage.bus_kafka import KafkaEventBus

        return KafkaEventBus.from_settings(s)
    if s.event_bus == "sqlite":
        from zerorec.storage.bus_sqlite import SqliteEventBus

        bus = _embedded_once(f"bus:{s.bus_sqlite_file.resolve()}", lambda: SqliteEventBus.from_settings(s))
    else:
        from zerorec.storage.bus_memory import MemoryEventBus

        bus = _embedded_once("bus", MemoryEventBus)
    assert isinstance(bus, EventBus)
    return bus
