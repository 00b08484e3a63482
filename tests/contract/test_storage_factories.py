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
