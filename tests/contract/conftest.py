"""One fixture per port, parametrized over its embedded backends and its real one.

The contract tests take `objects`, `kv` or `bus` and never look at which backend they got.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


CLUSTER_SCRIPT = Path(__file__).resolve().parents[2] / "local" / "redis_cluster.sh"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _cluster_ports() -> list[str]:
    """Three free ports whose cluster-bus ports (+10000) are free too."""
    ports: list[str] = []
    while len(ports) < 3:
        port = random.randint(20000, 45000)
        if str(port) not in ports and _bindable(port) and _bindable(port + 10000):
            ports.append(str(port))
    return ports


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-node Redis Cluster started by local/redis_cluster.sh for this session, stopped after."""
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        message = f"{' and '.join(missing)} not installed: no local Redis Cluster to test against"
        if os.environ.get("ZEROREC_INTEGRATION", "") == "1":  # CI must not pass by skipping
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("redis-cluster") / "nodes"
    started = subprocess.run(
        [str(CLUSTER_SCRIPT), "start", str(workdir), *_cluster_ports()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if started.returncode != 0:
        pytest.fail(f"local/redis_cluster.sh start failed: {started.stderr.strip()}", pytrace=False)
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(CLUSTER_SCRIPT), "stop", str(workdir)], capture_output=True, timeout=60)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=real), "redis-cluster"])
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

    if request.param == "redis-cluster":  # torn down with the session's cluster
        store = RedisKVStore(request.getfixturevalue("redis_cluster"))
        yield store
        store.close()
        return
    url = request.getfixturevalue("redis_server")
    store = RedisKVStore.from_settings(request.getfixturevalue("real_settings"))
    yield store
    store.close()
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"*{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def key(namespace: str) -> Callable[[str], str]:
    """Namespaced key names, so tests sharing one Redis never collide. The namespace is the hash
    tag: a test's keys share one Redis Cluster slot, where every write call is atomic as a whole
    (tests/contract/test_redis_cluster.py covers calls that span slots)."""
    return lambda name: f"{{{namespace}}}:{name}"


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
