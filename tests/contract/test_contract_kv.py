"""KVStore contract: runs unchanged against MemoryKVStore, SqliteKVStore and RedisKVStore (one server
and a local 3-node Redis Cluster)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from zerorec.errors import InvalidInputError
from zerorec.storage.kv import (
    Delete,
    Expire,
    Get,
    HGetAll,
    HIncr,
    HMGet,
    HSet,
    KVStore,
    ListPush,
    ListRange,
    Record,
    RecordGet,
    RecordIncr,
    RecordPush,
    RecordToken,
    Set,
    SetAdd,
    SetMembers,
    TokenSeen,
    ZIncr,
    ZRem,
    ZTop,
)

K = Callable[[str], str]


def test_reads_of_missing_keys(kv: KVStore, key: K) -> None:
    m = key("missing")
    assert kv.read([Get(m), HGetAll(m), HMGet(m, ("a", "b")), ListRange(m), ZTop(m, 5), SetMembers(m)]) == [
        None,
        {},
        [None, None],
        [],
        [],
        set(),
    ]
    assert kv.read([]) == []


def test_set_get_delete(kv: KVStore, key: K) -> None:
    kv.write([Set(key("s"), "v1")])
    kv.write([Set(key("s"), "v2 é ✓")])
    assert kv.read([Get(key("s"))]) == ["v2 é ✓"]
    kv.write([Delete(key("s")), Delete(key("never"))])
    assert kv.read([Get(key("s"))]) == [None]


def test_hash_ops(kv: KVStore, key: K) -> None:
    h = key("h")
    kv.write([HSet(h, {"title": "A", "cat": "x"}), HSet(h, {"cat": "y", "year": "2020"}), HSet(h, {})])
    assert kv.read([HGetAll(h), HMGet(h, ("cat", "nope", "title")), HMGet(h, ())]) == [
        {"title": "A", "cat": "y", "year": "2020"},
        ["y", None, "A"],
        [],
    ]


def test_hincr_accumulates(kv: KVStore, key: K) -> None:
    h = key("aff")
    kv.write([HIncr(h, "books", 1.5), HIncr(h, "books", 2.0), HIncr(h, "films", -0.25)])
    kv.write([HIncr(h, "books", 1)])
    got = kv.read([HGetAll(h)])[0]
    assert float(got["books"]) == pytest.approx(4.5)
    assert float(got["films"]) == pytest.approx(-0.25)


def test_sorted_set_ops(kv: KVStore, key: K) -> None:
    z = key("hot")
    kv.write([ZIncr(z, "a", 1), ZIncr(z, "b", 5), ZIncr(z, "c", 3), ZIncr(z, "a", 1.5), ZIncr(z, "d", -1)])
    assert kv.read([ZTop(z, 3)]) == [[("b", 5.0), ("c", 3.0), ("a", 2.5)]]
    assert kv.read([ZTop(z, 10)])[0][-1] == ("d", -1.0)
    assert kv.read([ZTop(z, 0)]) == [[]]
    kv.write([ZRem(z, "b"), ZRem(z, "zz")])
    assert [m for m, _ in kv.read([ZTop(z, 10)])[0]] == ["c", "a", "d"]


def test_sorted_set_ties_break_by_member_descending(kv: KVStore, key: K) -> None:
    z = key("ties")
    kv.write([ZIncr(z, m, 1) for m in ("a", "c", "b")])
    assert [m for m, _ in kv.read([ZTop(z, 3)])[0]] == ["c", "b", "a"]


def test_list_push_newest_first_and_capped(kv: KVStore, key: K) -> None:
    lst = key("recent")
    kv.write([ListPush(lst, ("i1", "i2"), maxlen=4)])
    kv.write([ListPush(lst, ("i3", "i4", "i5"), maxlen=4)])
    assert kv.read([ListRange(lst)]) == [["i5", "i4", "i3", "i2"]]
    assert kv.read(
        [ListRange(lst, 1, 2), ListRange(lst, 0, 0), ListRange(lst, -2, -1), ListRange(lst, 3, 1)]
    ) == [
        ["i4", "i3"],
        ["i5"],
        ["i3", "i2"],
        [],
    ]


def test_sets(kv: KVStore, key: K) -> None:
    s = key("seen")
    kv.write([SetAdd(s, ("a", "b")), SetAdd(s, ("b", "c")), SetAdd(s, ())])
    assert kv.read([SetMembers(s)]) == [{"a", "b", "c"}]


def test_pipelined_read_keeps_order(kv: KVStore, key: K) -> None:
    kv.write(
        [
            Set(key("g"), "1"),
            HSet(key("h"), {"f": "v"}),
            ListPush(key("l"), ("x",), 10),
            ZIncr(key("z"), "m", 2),
            SetAdd(key("s"), ("q",)),
        ]
    )
    ops = [
        SetMembers(key("s")),
        Get(key("g")),
        ZTop(key("z"), 1),
        HMGet(key("h"), ("f",)),
        ListRange(key("l")),
        Get(key("nope")),
        HGetAll(key("h")),
        Get(key("g")),
    ]
    assert kv.read(ops) == [{"q"}, "1", [("m", 2.0)], ["v"], ["x"], None, {"f": "v"}, "1"]


def test_write_is_all_or_nothing(kv: KVStore, key: K) -> None:
    kv.write([Set(key("str"), "x"), ZIncr(key("z"), "m", 1)])
    with pytest.raises(InvalidInputError):
        # the last op hits a string with a hash command: nothing of the batch may stick
        kv.write([ZIncr(key("z"), "m", 10), Set(key("new"), "y"), HSet(key("str"), {"f": "v"})])
    assert kv.read([ZTop(key("z"), 1), Get(key("new")), Get(key("str"))]) == [[("m", 1.0)], None, "x"]


def test_write_refuses_bad_ops(kv: KVStore, key: K) -> None:
    with pytest.raises(InvalidInputError):
        kv.write([Set(key("a"), "1"), Set(key("b"), "1", ttl_s=0)])
    with pytest.raises(InvalidInputError):
        kv.write([ListPush(key("l"), ("x",), maxlen=0)])
    with pytest.raises(InvalidInputError):
        kv.write([Get(key("a"))])  # type: ignore[list-item]
    assert kv.read([Get(key("a"))]) == [None]


def test_wrong_type_read_is_invalid_input(kv: KVStore, key: K) -> None:
    kv.write([Set(key("str"), "x")])
    with pytest.raises(InvalidInputError):
        kv.read([HGetAll(key("str"))])


def test_apply_once_skips_duplicates(kv: KVStore, key: K) -> None:
    ops = [ZIncr(key("pop"), "item1", 1), HIncr(key("u1"), "books", 1), ListPush(key("hist"), ("item1",), 50)]
    assert kv.apply_once(key("evt-1"), ops) is True
    assert kv.apply_once(key("evt-1"), ops) is False  # redelivery
    assert kv.apply_once(key("evt-2"), ops) is True
    got = kv.read([ZTop(key("pop"), 1), HGetAll(key("u1")), ListRange(key("hist"))])
    assert got[0] == [("item1", 2.0)]
    assert float(got[1]["books"]) == 2.0
    assert got[2] == ["item1", "item1"]


def test_apply_once_failure_does_not_mark_token(kv: KVStore, key: K) -> None:
    kv.write([Set(key("str"), "x")])
    with pytest.raises(InvalidInputError):
        kv.apply_once(key("evt"), [ZIncr(key("pop"), "a", 1), HIncr(key("str"), "f", 1)])
    assert kv.read([ZTop(key("pop"), 1)]) == [[]]
    assert kv.apply_once(key("evt"), [ZIncr(key("pop"), "a", 1)]) is True  # the retry applies


def test_apply_once_concurrent_duplicates_apply_once(kv: KVStore, key: K) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        barrier.wait()
        for i in range(10):
            results.append(kv.apply_once(key(f"evt-{i}"), [ZIncr(key("pop"), "x", 1)]))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 10
    assert kv.read([ZTop(key("pop"), 1)]) == [[("x", 10.0)]]


def test_concurrent_increments_are_not_lost(kv: KVStore, key: K) -> None:
    def worker() -> None:
        for _ in range(25):
            kv.write([HIncr(key("h"), "n", 1), ZIncr(key("z"), "m", 1)])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h, z = kv.read([HGetAll(key("h")), ZTop(key("z"), 1)])
    assert float(h["n"]) == 100
    assert z == [("m", 100.0)]


def test_ttl_expiry(kv: KVStore, key: K) -> None:
    kv.write([Set(key("short"), "v", ttl_s=1), Set(key("kept"), "v", ttl_s=1), Set(key("kept"), "v2")])
    assert kv.apply_once(key("tok"), [ZIncr(key("z"), "m", 1)], ttl_s=1) is True
    assert kv.apply_once(key("tok"), [ZIncr(key("z"), "m", 1)], ttl_s=1) is False
    time.sleep(1.3)
    assert kv.read([Get(key("short")), Get(key("kept"))]) == [None, "v2"]  # plain Set clears the TTL
    assert kv.apply_once(key("tok"), [ZIncr(key("z"), "m", 1)], ttl_s=1) is True  # token expired
    assert kv.read([ZTop(key("z"), 1)]) == [[("m", 2.0)]]
    with pytest.raises(InvalidInputError):
        kv.apply_once(key("tok2"), [], ttl_s=0)


def test_apply_many_applies_each_token_once_in_one_call(kv: KVStore, key: K) -> None:
    def ops(item: str) -> list:
        return [ZIncr(key("pop"), item, 1), HIncr(key("u1"), "books", 1), ListPush(key("hist"), (item,), 50)]

    assert kv.apply_once(key("evt-0"), ops("i0")) is True
    batch = [(key("evt-0"), ops("i0")), (key("evt-1"), ops("i1")), (key("evt-2"), ops("i2"))]
    batch.append((key("evt-1"), ops("i1")))  # the same id twice in one batch: the second is a duplicate
    assert kv.apply_many(batch) == [False, True, True, False]
    assert kv.apply_many(batch) == [False, False, False, False]  # redelivery of the whole batch
    assert kv.apply_many([]) == []
    pop, user, hist = kv.read([ZTop(key("pop"), 5), HGetAll(key("u1")), ListRange(key("hist"))])
    assert sorted(pop) == [("i0", 1.0), ("i1", 1.0), ("i2", 1.0)]
    assert float(user["books"]) == 3.0
    assert hist == ["i2", "i1", "i0"]  # applied in batch order
    assert kv.apply_once(key("evt-2"), ops("i2")) is False  # tokens set by apply_many count for apply_once


def test_apply_many_is_all_or_nothing(kv: KVStore, key: K) -> None:
    kv.write([Set(key("str"), "x")])
    batch = [
        (key("ok-1"), [ZIncr(key("pop"), "a", 1)]),
        (key("bad"), [ZIncr(key("pop"), "b", 1), HIncr(key("str"), "f", 1)]),  # hash op on a string
        (key("ok-2"), [ZIncr(key("pop"), "c", 1)]),
    ]
    with pytest.raises(InvalidInputError):
        kv.apply_many(batch)
    assert kv.read([ZTop(key("pop"), 5)]) == [[]]
    # no token was set: the good entries apply on the retry
    assert kv.apply_many([batch[0], batch[2]]) == [True, True]
    assert sorted(kv.read([ZTop(key("pop"), 5)])[0]) == [("a", 1.0), ("c", 1.0)]
    with pytest.raises(InvalidInputError):
        kv.apply_many([(key("t"), [])], ttl_s=0)


def test_apply_many_type_checks_across_entries(kv: KVStore, key: K) -> None:
    # the first entry makes k a sorted set; the second uses it as a hash: refused, nothing applied
    batch = [(key("e1"), [ZIncr(key("k"), "m", 1)]), (key("e2"), [HIncr(key("k"), "f", 1)])]
    with pytest.raises(InvalidInputError):
        kv.apply_many(batch)
    assert kv.read([ZTop(key("k"), 1), Get(key("e1"))]) == [[], None]


def test_apply_many_concurrent_duplicates_apply_once(kv: KVStore, key: K) -> None:
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        got = kv.apply_many([(key(f"evt-{i}"), [ZIncr(key("pop"), "x", 1)]) for i in range(20)])
        with lock:
            results.extend(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 20
    assert kv.read([ZTop(key("pop"), 1)]) == [[("x", 20.0)]]


# ---- records: capped lists and counters, a dedupe window, one string key ------------------------


def test_record_list_is_distinct_newest_first_and_capped(kv: KVStore, key: K) -> None:
    r = key("rec")
    kv.write([RecordPush(r, "h", v, 3) for v in ("a", "b", "c")])
    kv.write([RecordPush(r, "h", "a", 3)])  # seen again: moves to the front, no duplicate
    kv.write([RecordPush(r, "h", "d", 3), RecordPush(r, "other", "x", 5)])
    (got,) = kv.read([RecordGet(r)])
    assert got == Record(lists={"h": ["d", "a", "c"], "other": ["x"]})
    assert kv.read([RecordGet(key("missing"))]) == [Record()]
    assert isinstance(kv.read([Get(r)])[0], str)  # one plain string key holds it all


def test_record_counters_accumulate_and_keep_the_largest(kv: KVStore, key: K) -> None:
    r = key("rec")
    kv.write([RecordIncr(r, "c", "books", 1.5, 3), RecordIncr(r, "c", "films", 0.5, 3)])
    kv.write([RecordIncr(r, "c", "books", 2, 3), RecordIncr(r, "c", "music", 0.5, 3)])
    kv.write([RecordIncr(r, "c", "games", 1, 3)])  # a 4th: the smallest goes, the oldest of a tie
    (got,) = kv.read([RecordGet(r)])
    assert got.counters == {"c": {"books": 3.5, "music": 0.5, "games": 1.0}}
    kv.write([RecordIncr(r, "c", "books", 1 / 3, 3)])
    assert kv.read([RecordGet(r)])[0].counters["c"]["books"] == pytest.approx(3.83333)  # 6 digits


def test_record_lists_and_counters_live_side_by_side(kv: KVStore, key: K) -> None:
    r = key("rec")
    kv.write([RecordIncr(r, "x", "m", 1, 5), RecordPush(r, "x", "v", 5), RecordPush(r, "h", "i1", 5)])
    assert kv.read([RecordGet(r)]) == [Record(lists={"x": ["v"], "h": ["i1"]}, counters={"x": {"m": 1.0}})]


def test_record_ops_refuse_what_the_format_cannot_hold(kv: KVStore, key: K) -> None:
    r = key("rec")
    for bad in (
        RecordPush(r, "h", "a\x1fb", 5),
        RecordPush(r, "h", "", 5),
        RecordPush(r, "h\x1e", "a", 5),
        RecordPush(r, "h", "a", 0),
        RecordIncr(r, "c", "x\x1c", 1, 5),
        RecordIncr(r, "c", "x", float("nan"), 5),
    ):
        with pytest.raises(InvalidInputError):
            kv.write([RecordPush(r, "h", "ok", 5), bad])
    assert kv.read([RecordGet(r)]) == [Record()]  # nothing of the refused calls


def test_record_ops_on_other_keys_are_invalid_input_and_apply_nothing(kv: KVStore, key: K) -> None:
    kv.write([HSet(key("hash"), {"f": "v"}), Set(key("plain"), "not a record")])
    with pytest.raises(InvalidInputError):
        kv.write([RecordPush(key("rec"), "h", "a", 5), RecordPush(key("hash"), "h", "a", 5)])
    with pytest.raises(InvalidInputError):
        kv.write([RecordPush(key("rec"), "h", "a", 5), RecordIncr(key("plain"), "c", "a", 1, 5)])
    with pytest.raises(InvalidInputError):
        kv.read([RecordGet(key("plain"))])
    assert kv.read([RecordGet(key("rec")), Get(key("plain"))]) == [Record(), "not a record"]
    kv.write([Set(key("plain"), "x"), Delete(key("plain")), RecordPush(key("plain"), "h", "a", 5)])
    assert kv.read([RecordGet(key("plain"))]) == [Record(lists={"h": ["a"]})]  # deleted first: fine


def test_expire_applies_after_the_writes_of_the_call(kv: KVStore, key: K) -> None:
    r, h = key("rec"), key("hash")
    kv.write([Expire(r, 1), RecordPush(r, "h", "a", 5), Expire(h, 1), HSet(h, {"f": "v"})])
    kv.write([Expire(key("missing"), 1)])  # no key, nothing to expire
    kv.write([RecordPush(key("kept"), "h", "a", 5)])
    kv.write([RecordPush(r, "h", "b", 5)])  # a later write keeps the TTL (it is not refreshed)
    assert kv.read([RecordGet(r)]) == [Record(lists={"h": ["b", "a"]})]
    with pytest.raises(InvalidInputError):
        kv.write([Expire(r, 0)])
    time.sleep(1.3)
    assert kv.read([RecordGet(r), HGetAll(h), Get(key("missing")), RecordGet(key("kept"))]) == [
        Record(),
        {},
        None,
        Record(lists={"h": ["a"]}),
    ]


def test_record_token_applies_once_in_the_records_window(kv: KVStore, key: K) -> None:
    r = key("user")

    def ops(item: str) -> list:
        return [RecordPush(r, "h", item, 50), RecordIncr(r, "c", "books", 1, 8), ZIncr(key("hot"), item, 1)]

    e1, e2 = RecordToken(r, "evt-1"), RecordToken(r, "evt-2")
    assert kv.read([TokenSeen(e1)]) == [False]
    assert kv.apply_once(e1, ops("i1"), ttl_s=3600) is True
    assert kv.apply_once(e1, ops("i1"), ttl_s=3600) is False  # redelivered within the window
    again = [(e2, ops("i2")), (e1, ops("i1")), (e2, ops("i2"))]
    assert kv.apply_many(again, ttl_s=3600) == [True, False, False]
    assert kv.read([TokenSeen(e1), TokenSeen(e2), TokenSeen(RecordToken(r, "evt-3"))]) == [True, True, False]
    rec, hot = kv.read([RecordGet(r), ZTop(key("hot"), 5)])
    assert rec == Record(lists={"h": ["i2", "i1"]}, counters={"c": {"books": 2.0}})
    assert sorted(hot) == [("i1", 1.0), ("i2", 1.0)]
    assert kv.read([Get(key("evt-1"))]) == [None]  # no key per event
    with pytest.raises(InvalidInputError):
        kv.apply_once(RecordToken(r, "bad\x1f"), ops("i3"))


def test_record_token_is_remembered_until_two_windows_of_writes(kv: KVStore, key: K) -> None:
    r = key("user")
    push = [RecordPush(r, "h", "i", 5)]
    assert kv.apply_once(RecordToken(r, "old"), push, ttl_s=1) is True
    time.sleep(1.2)  # a window later, and however long the user stays idle: still remembered
    assert kv.apply_once(RecordToken(r, "old"), push, ttl_s=1) is False
    assert kv.apply_once(RecordToken(r, "new-1"), push, ttl_s=1) is True  # 1st window of writes since
    assert kv.apply_once(RecordToken(r, "old"), push, ttl_s=1) is False
    time.sleep(1.2)
    assert kv.apply_once(RecordToken(r, "new-2"), push, ttl_s=1) is True  # 2nd window: "old" leaves
    assert kv.read([TokenSeen(RecordToken(r, "old")), TokenSeen(RecordToken(r, "new-1"))]) == [False, True]
    assert kv.apply_once(RecordToken(r, "old"), push, ttl_s=1) is True


def test_plain_and_record_tokens_mix_in_one_batch(kv: KVStore, key: K) -> None:
    batch = [
        (key("evt-a"), [ZIncr(key("z"), "a", 1)]),
        (RecordToken(key("user"), "evt-b"), [RecordPush(key("user"), "h", "b", 5)]),
    ]
    assert kv.apply_many(batch) == [True, True]
    assert kv.apply_many(batch) == [False, False]
    assert kv.read([TokenSeen(key("evt-a")), TokenSeen(RecordToken(key("user"), "evt-b"))]) == [True, True]
    assert kv.read([TokenSeen(key("evt-b"))]) == [False]


def test_record_token_on_a_non_record_refuses_the_batch(kv: KVStore, key: K) -> None:
    kv.write([HSet(key("hash"), {"f": "v"})])
    with pytest.raises(InvalidInputError):
        kv.apply_many(
            [
                (RecordToken(key("user"), "ok"), [RecordPush(key("user"), "h", "a", 5)]),
                (RecordToken(key("hash"), "bad"), []),
            ]
        )
    assert kv.read([RecordGet(key("user")), TokenSeen(RecordToken(key("user"), "ok"))]) == [Record(), False]
