"""Stopped or silent servers give a typed error within a bounded time, never a hang.

Two kinds of dead server, on ports of our own (no real server needed):
- refused: nothing listens (the connection is refused at once);
- silent: a socket that accepts connections but never answers (only timeouts can end the wait).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from zerorec.errors import BackendUnavailableError, DeliveryError
from zerorec.settings import Settings
from zerorec.storage.bus import OutgoingRecord
from zerorec.storage.bus_kafka import KafkaEventBus
from zerorec.storage.kv import Get, Set, ZIncr
from zerorec.storage.kv_redis import RedisKVStore
from zerorec.storage.objects_s3 import S3ObjectStore

BOUND_S = 15.0
TIMEOUTS = {"connect_timeout_s": 1.0, "request_timeout_s": 2.0}


@pytest.fixture(params=["refused", "silent"])
def dead_port(request: pytest.FixtureRequest) -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if request.param == "silent":
            s.listen(64)  # the kernel completes handshakes; nobody ever reads or writes
            yield port
            return
    yield port  # closed again: nothing listens


def _fails_fast(call: Callable[[], Any], error: type[Exception]) -> float:
    start = time.monotonic()
    with pytest.raises(error) as info:
        call()
    elapsed = time.monotonic() - start
    assert elapsed < BOUND_S, f"took {elapsed:.1f}s"
    assert "127.0.0.1" in str(info.value)  # the message says which server failed
    return elapsed


def test_s3_down(dead_port: int) -> None:
    store = S3ObjectStore(
        endpoint=f"http://127.0.0.1:{dead_port}", bucket="zerorec", access_key="k", secret_key="s", **TIMEOUTS
    )
    _fails_fast(lambda: store.get("a/b"), BackendUnavailableError)
    _fails_fast(lambda: store.put("a/b", b"x"), BackendUnavailableError)
    _fails_fast(lambda: store.exists("a/b"), BackendUnavailableError)
    _fails_fast(lambda: list(store.list("a/")), BackendUnavailableError)
    store.close()


def test_redis_down(dead_port: int) -> None:
    kv = RedisKVStore(f"redis://127.0.0.1:{dead_port}/0", **TIMEOUTS)
    _fails_fast(lambda: kv.read([Get("a")]), BackendUnavailableError)
    _fails_fast(lambda: kv.write([Set("a", "1")]), BackendUnavailableError)
    _fails_fast(lambda: kv.apply_once("evt", [ZIncr("z", "m", 1)]), BackendUnavailableError)
    kv.close()


def test_kafka_publish_to_dead_broker_is_never_reported_sent(dead_port: int) -> None:
    bus = KafkaEventBus(f"127.0.0.1:{dead_port}", **TIMEOUTS)
    try:
        _fails_fast(lambda: bus.publish("zerorec.behavior", [OutgoingRecord(b"v", b"k")]), DeliveryError)
        # a second publish on the same (still unconnected) producer fails the same way
        _fails_fast(lambda: bus.publish("zerorec.behavior", [OutgoingRecord(b"w")]), DeliveryError)
    finally:
        bus.close()


def test_kafka_admin_and_consumer_on_dead_broker(dead_port: int) -> None:
    bus = KafkaEventBus(f"127.0.0.1:{dead_port}", **TIMEOUTS)
    try:
        _fails_fast(lambda: bus.ensure_topics(["zerorec.behavior"]), BackendUnavailableError)
        _fails_fast(lambda: bus.consumer(["zerorec.behavior"], "g"), BackendUnavailableError)
    finally:
        bus.close()


def test_s3_wrong_credentials_are_a_clear_error(s3_server: str, real_settings: Settings) -> None:
    bad = real_settings.model_copy(update={"s3_secret_key": "not-the-secret"})
    store = S3ObjectStore.from_settings(bad)
    with pytest.raises(BackendUnavailableError, match="refused"):
        store.get("any/key")
    store.close()
