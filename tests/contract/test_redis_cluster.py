"""RedisKVStore on a local 3-node Redis Cluster: calls whose keys span slots (and nodes).

The KV contract runs on the cluster too (the `kv` fixture's `redis-cluster` backend), with every
test's keys in one slot; here the keys of one call are spread over slots on purpose."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot
from zerorec.errors import BackendUnavailableError, InvalidInputError
from zerorec.storage.kv import (
    Get,
    HGetAll,
    HSet,
    Record,
    RecordGet,
    RecordPush,
    RecordToken,
    Set,
    TokenSeen,
    ZIncr,
    ZTop,
)
from zerorec.storage.kv_redis import RedisKVStore, cluster_nodes


@pytest.fixture
def store(redis_cluster: str) -> Iterator[RedisKVStore]:
    kv = RedisKVStore(redis_cluster)
    yield kv
    kv.close()


def _nodes_of(store: RedisKVStore, keys: list[str]) -> set[str]:
    client = store._client()
    return {client.get_node_from_key(k).name for k in keys}


def test_a_write_spanning_nodes_applies_every_slot(store: RedisKVStore, namespace: str) -> None:
    keys = [f"{namespace}:k{n}" for n in range(30)]  # no hash tag: spread over the slots
    assert len({key_slot(k.encode()) for k in keys}) > 20 and len(_nodes_of(store, keys)) == 3
    store.write([Set(k, str(n)) for n, k in enumerate(keys)] + [HSet(f"{namespace}:h", {"f": "v"})])
    assert store.read([Get(k) for k in keys] + [HGetAll(f"{namespace}:h")]) == [
        *(str(n) for n in range(30)),
        {"f": "v"},
    ]


def test_tokens_apply_once_with_ops_in_other_slots(store: RedisKVStore, namespace: str) -> None:
    users = [f"u:{{{namespace}-{n}}}" for n in range(40)]  # one slot each, all three nodes
    hot = f"hot:{{{namespace}-hot}}:all"
    batch = [
        (RecordToken(u, f"e{n}"), [RecordPush(u, "h", f"i{n % 3}", 50), ZIncr(hot, f"i{n % 3}", 1)])
        for n, u in enumerate(users)
    ]
    assert store.apply_many(batch, ttl_s=3600) == [True] * 40
    assert store.apply_many(batch, ttl_s=3600) == [False] * 40  # redelivered: not even the hot list
    assert store.apply_once(*batch[0], ttl_s=3600) is False
    (top,) = store.read([ZTop(hot, 5)])
    assert sorted(top) == [("i0", 14.0), ("i1", 13.0), ("i2", 13.0)]
    records = store.read([RecordGet(u) for u in users])
    assert records == [Record(lists={"h": [f"i{n % 3}"]}) for n in range(40)]
    assert all(store.read([TokenSeen(RecordToken(u, f"e{n}")) for n, u in enumerate(users)]))


def test_a_refused_token_slot_applies_nothing_of_its_entry(store: RedisKVStore, namespace: str) -> None:
    user, hot = f"u:{{{namespace}}}", f"hot:{{{namespace}-hot}}:all"
    store.write([HSet(user, {"not": "a record"})])
    with pytest.raises(InvalidInputError):
        store.apply_once(RecordToken(user, "e1"), [RecordPush(user, "h", "i", 5), ZIncr(hot, "i", 1)])
    assert store.read([ZTop(hot, 5)]) == [[]]  # the other slot's ops wait for the token's slot


def test_the_cluster_url_is_checked_and_connecting_is_lazy() -> None:
    with pytest.raises(InvalidInputError):
        cluster_nodes("redis-cluster://")
    with pytest.raises(InvalidInputError):
        cluster_nodes("redis-cluster://host-without-port")
    assert [(n.host, n.port) for n in cluster_nodes("redis-cluster://a:1,b:2")] == [("a", 1), ("b", 2)]
    unreachable = RedisKVStore("redis-cluster://127.0.0.1:1", connect_timeout_s=0.2)  # no connection yet
    with pytest.raises(BackendUnavailableError):
        unreachable.read([Get("k")])


def test_the_script_is_reloaded_on_a_node_that_lost_it(
    store: RedisKVStore, namespace: str, redis_cluster: str
) -> None:
    store.write([Set(f"{namespace}:a", "1")])
    for node in cluster_nodes(redis_cluster):  # a failover or restart empties a node's script cache
        redis.Redis(host=node.host, port=node.port).script_flush()
    keys = [f"{namespace}:k{n}" for n in range(12)]
    store.write([Set(k, "v") for k in keys])
    assert store.read([Get(k) for k in keys]) == ["v"] * 12
