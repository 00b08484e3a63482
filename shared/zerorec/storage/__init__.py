"""Storage ports and the factories that pick a backend from Settings.

The embedded backends (local directory, in-process KV and bus) need nothing installed; the real
ones (S3, Redis, Kafka) are imported only when selected. The in-process KV store and event bus
are shared by everything in one process, so embedded functions running side by side see one
another's writes and events.
"""

from __future__ import annotations

import threading

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


def kv_store(settings: Settings | None = None) -> KVStore:
    """The configured KV store: `memory` (one per process) or `redis`."""
    s = settings or get_settings()
    if s.kv_store == "redis":
        from zerorec.storage.kv_redis import RedisKVStore

        return RedisKVStore.from_settings(s)
    from zerorec.storage.kv_memory import MemoryKVStore

    with _lock:
        store = _embedded.setdefault("kv", MemoryKVStore())
    assert isinstance(store, KVStore)
    return store


def event_bus(settings: Settings | None = None) -> EventBus:
    """The configured event bus: `memory` (one per process) or `kafka`."""
    s = settings or get_settings()
    if s.event_bus == "kafka":
        from zerorec.storage.bus_kafka import KafkaEventBus

        return KafkaEventBus.from_settings(s)
    from zerorec.storage.bus_memory import MemoryEventBus

    with _lock:
        bus = _embedded.setdefault("bus", MemoryEventBus())
    assert isinstance(bus, EventBus)
    return bus
