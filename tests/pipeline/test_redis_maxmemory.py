"""Redis at its `maxmemory` with the `noeviction` policy (README, "Bounded memory and storage"):
Redis refuses writes; the consumer answers 503 with the reason (the KafkaSource retries), nothing of
the event is half-written, and once memory is freed the redelivered event is applied exactly once."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import redis
from pipeline_helpers import call, click
from zerorec.cloudevents_io import new_event, to_http_binary
from zerorec.consumer import BEHAVIOR_TYPE
from zerorec.realtime import CATEGORIES, ItemRecord, hot_key, item_upsert_writes, user_key
from zerorec.storage.kv import RecordGet
from zerorec.storage.kv_redis import RedisKVStore


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own: 4 MB maxmemory, noeviction (the documented policy)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (local/bootstrap.sh installs it)")
    port = _free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp_path), "--save", ""]
    argv += ["--appendonly", "no", "--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, socket_timeout=2)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _fill(client: redis.Redis) -> int:
    """Write junk until Redis refuses: the number of keys written."""
    n = 0
    while True:
        try:
            client.set(f"fill:{n}", b"x" * 16384)
        except redis.ResponseError as exc:
            assert "maxmemory" in str(exc)
            return n
        n += 1


def test_consumer_answers_503_and_writes_nothing_when_redis_is_full(
    make_app: Any, namespace: str, small_redis: str
) -> None:
    app = make_app("consumer", ZEROREC_KV_STORE="redis", ZEROREC_REDIS_URL=small_redis)
    kv = RedisKVStore(small_redis)
    client = redis.Redis.from_url(small_redis)
    item, user, category = f"{namespace}i", f"{namespace}u", f"{namespace}c"
    kv.write(item_upsert_writes(ItemRecord(item, "t", (category,), time.time())))
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    filled = _fill(client)
    assert filled > 10

    headers, body = to_http_binary(new_event(BEHAVIOR_TYPE, click(user, item), source="/test"))
    refused = call(app, "POST", "/", headers=headers, content=body)
    assert refused.status_code == 503, refused.text
    assert "maxmemory" in refused.text  # the reason, from Redis, reaches the caller (and the logs)
    # Nothing half-written: no user record, no hot-list entry, not in the category's list either.
    assert client.exists(user_key(user)) == 0
    assert client.zscore(hot_key(), item) is None and client.zscore(hot_key(category), item) is None

    client.delete(*[f"fill:{n}" for n in range(filled)])  # memory freed (an operator, an expiry)
    for _ in range(2):  # the KafkaSource's retry, and a redelivery of the same event
        again = call(app, "POST", "/", headers=headers, content=body)
        assert again.status_code == 200, again.text
    (record,) = kv.read([RecordGet(user_key(user))])
    assert record.lists["h"] == [item] and record.counters[CATEGORIES] == {category: 1.0}
    assert client.zscore(hot_key(category), item) is not None
