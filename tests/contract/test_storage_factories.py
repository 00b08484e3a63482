"""The factories pick the backend named in Settings; building a real one does not connect."""

from __future__ import annotations

from zerorec.settings import Settings
from zerorec.storage import event_bus, kv_store, object_store
from zerorec.storage.bus_kafka import KafkaEventBus
from zerorec.storage.bus_memory import MemoryEventBus
from zerorec.storage.kv_memory import MemoryKVStore
from zerorec.storage.kv_redis import RedisKVStore
from zerorec.storage.objects_local import LocalObjectStore
from zerorec.storage.objects_s3 import S3ObjectStore


def _embedded(tmp_path) -> Settings:
    # explicit, since `local/infra.sh env` exports the real backends into the environment
    return Settings(data_dir=tmp_path, object_store="local", kv_store="memory", event_bus="memory")


def test_embedded_defaults(tmp_path) -> None:
    s = _embedded(tmp_path)
    store = object_store(s)
    assert isinstance(store, LocalObjectStore)
    assert store.root == (tmp_path / "objects").resolve()
    assert isinstance(kv_store(s), MemoryKVStore)
    assert isinstance(event_bus(s), MemoryEventBus)


def test_embedded_kv_and_bus_are_shared_in_process(tmp_path) -> None:
    s = _embedded(tmp_path)
    assert kv_store(s) is kv_store(s)
    assert event_bus(s) is event_bus(s)


def test_real_backends_are_selected_without_connecting(real_settings: Settings) -> None:
    s = real_settings.model_copy(
        update={
            "s3_endpoint": "http://127.0.0.1:1",
            "redis_url": "redis://127.0.0.1:1/0",
            "kafka_bootstrap": "127.0.0.1:1",
        }
    )
    store = object_store(s)
    assert isinstance(store, S3ObjectStore)
    assert store.bucket == s.s3_bucket
    assert isinstance(kv_store(s), RedisKVStore)
    assert isinstance(event_bus(s), KafkaEventBus)


def test_sqlite_is_the_default_and_lives_under_data_dir(tmp_path) -> None:
    from zerorec.storage.bus_sqlite import SqliteEventBus
    from zerorec.storage.kv_sqlite import SqliteKVStore

    defaults = Settings.model_fields
    assert (defaults["kv_store"].default, defaults["event_bus"].default) == ("sqlite", "sqlite")
    s = Settings(data_dir=tmp_path, kv_store="sqlite", event_bus="sqlite")
    kv, bus = kv_store(s), event_bus(s)
    assert isinstance(kv, SqliteKVStore) and kv.path == tmp_path / "kv.sqlite3"
    assert isinstance(bus, SqliteEventBus) and bus.path == tmp_path / "bus.sqlite3"
    assert kv_store(s) is kv and event_bus(s) is bus  # one per file and process
    other = Settings(data_dir=tmp_path, kv_store="sqlite", sqlite_kv_path=tmp_path / "other.db")
    assert kv_store(other) is not kv and kv_store(other).path == tmp_path / "other.db"


def test_a_redis_cluster_url_selects_the_cluster_client_without_connecting(real_settings: Settings) -> None:
    s = real_settings.model_copy(update={"redis_url": "redis-cluster://127.0.0.1:1,127.0.0.1:2"})
    kv = kv_store(s)
    assert isinstance(kv, RedisKVStore) and kv.cluster
    kv.close()  # nothing was opened
