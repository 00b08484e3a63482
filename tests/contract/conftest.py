"""One fixture per port, parametrized over its embedded backends and its real one.

The contract tests take `objects`, `kv` or `bus` and never look at which backend they got.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from zerorec.settings import Settings
from zerorec.storage.bus import Consumer, EventBus, Record
from zerorec.storage.kv import KVStore
from zerorec.storage.objects import ObjectStore

real = pytest.mark.integration


@pytest.fixture(params=["local", pytest.param("s3", marks=real)])
def objects(request: pytest.FixtureRequest, tmp_path, namespace: str) -> Iterator[ObjectStore]:
    if request.param == "local":
        from zerorec.storage.objects_local import LocalObjectStore

        yield LocalObjectStore(tmp_path / "objects")
        return
    from zerorec.storage.objects_s3 import S3ObjectStore

    request.getfixturevalue("s3_server")
    settings: Settings = request.getfixturevalue("real_settings")
    # A small batch size makes every list test cross batch boundaries. The bucket is local/infra.sh's.
    store = S3ObjectStore.from_settings(settings, prefix=f"contract/{namespace}", page_size=3)
    yield store
    for key in list(store.list()):
        store.delete(key)
    store.close()


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=real)])
def kv(request: pytest.FixtureRequest, namespace: str, tmp_path) -> Iterator[KVStore]:
    if request.param == "memory":
        from zerorec.storage.kv_memory import MemoryKVStore

        yield MemoryKVStore()
        return
    if request.param == "sqlite":
        from zerorec.storage.kv_sqlite import SqliteKVStore

        store = SqliteKVStore(tmp_path / "kv.sqlite3")
        yield store
        store.close()
        return
    import redis
    from zerorec.storage.kv_redis import RedisKVStore

    url = request.getfixturevalue("redis_server")
    store = RedisKVStore.from_settings(request.getfixturevalue("real_settings"))
    yield store
    store.close()
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def key(namespace: str) -> Callable[[str], str]:
    """Namespaced key names, so tests sharing one Redis never collide."""
    return lambda name: f"{namespace}:{name}"


@pytest.fixture(params=["memory", "sqlite", pytest.param("kafka", marks=real)])
def bus(request: pytest.FixtureRequest, namespace: str, tmp_path) -> Iterator[EventBus]:
    if request.param == "memory":
        from zerorec.storage.bus_memory import MemoryEventBus

        yield MemoryEventBus()
        return
    if request.param == "sqlite":
        from zerorec.storage.bus_sqlite import SqliteEventBus

        sqlite_bus = SqliteEventBus(tmp_path / "bus.sqlite3")
        yield sqlite_bus
        sqlite_bus.close()
        return
    from confluent_kafka.admin import AdminClient
    from zerorec.storage.bus_kafka import KafkaEventBus

    bootstrap = request.getfixturevalue("kafka_server")
    bus = KafkaEventBus.from_settings(request.getfixturevalue("real_settings"))
    yield bus
    bus.close()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in admin.list_topics(timeout=5).topics if namespace in t]
    if topics:
        for fut in admin.delete_topics(topics, operation_timeout=5).values():
            fut.result(timeout=10)


@pytest.fixture
def topic(namespace: str) -> Callable[[str], str]:
    """Namespaced topic (and group) names."""
    return lambda name: f"zr.{namespace}.{name}"


def _drain(consumer: Consumer, n: int, timeout_s: float = 30.0) -> list[Record]:
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += consumer.poll(max_records=n - len(out), timeout_s=0.5)
    return out


@pytest.fixture
def drain() -> Callable[..., list[Record]]:
    """drain(consumer, n): poll until `n` records arrived or 30 s passed (Kafka group joins take time)."""
    return _drain
