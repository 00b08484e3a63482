"""EventBus contract: runs unchanged against MemoryEventBus, SqliteEventBus and KafkaEventBus."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from zerorec.errors import InvalidInputError
from zerorec.storage.bus import EventBus, OutgoingRecord

T = Callable[[str], str]
D = Callable[..., list]


def _records(*values: str) -> list[OutgoingRecord]:
    return [OutgoingRecord(value=v.encode(), key=f"k-{v}".encode()) for v in values]


def test_round_trip_keeps_keys_headers_and_order(bus: EventBus, topic: T, drain: D) -> None:
    t = topic("behavior")
    bus.ensure_topics([t])
    bus.ensure_topics([t])  # idempotent
    sent = [
        OutgoingRecord(
            value=b'{"user":"u1"}', key=b"u1", headers=(("ce_type", b"zerorec.click"), ("ce_id", b"1"))
        ),
        OutgoingRecord(value=bytes(range(256)), key=None),
        OutgoingRecord(value=b"third", key=b"u1", headers=(("h", b"\x00\xff"),)),
    ]
    bus.publish(t, sent)
    bus.publish(t, [])  # nothing to send is not an error
    c = bus.consumer([t], topic("g"))
    got = drain(c, 3)
    c.close()
    assert [(r.value, r.key, r.headers) for r in got] == [(s.value, s.key, s.headers) for s in sent]
    assert all(r.topic == t for r in got)
    assert [r.offset for r in got] == sorted(r.offset for r in got)
    assert len({(r.partition, r.offset) for r in got}) == 3
    assert all(r.timestamp_ms > 0 for r in got)


def test_committed_records_are_not_seen_again(bus: EventBus, topic: T, drain: D) -> None:
    t, g = topic("a"), topic("g")
    bus.ensure_topics([t])
    bus.publish(t, _records("1", "2", "3"))
    c1 = bus.consumer([t], g)
    first = drain(c1, 3)
    assert [r.value for r in first] == [b"1", b"2", b"3"]
    c1.commit(first)
    c1.close()
    bus.publish(t, _records("4"))
    c2 = bus.consumer([t], g)
    again = drain(c2, 1)
    c2.close()
    assert [r.value for r in again] == [b"4"]  # the first thing the group sees is the new record


def test_uncommitted_records_are_redelivered_after_close(bus: EventBus, topic: T, drain: D) -> None:
    t, g = topic("a"), topic("g")
    bus.ensure_topics([t])
    bus.publish(t, _records("1", "2", "3"))
    c1 = bus.consumer([t], g)
    got = drain(c1, 3)
    c1.commit(got[:1])  # processed only the first one, then "crashed"
    c1.close()
    c2 = bus.consumer([t], g)
    redelivered = drain(c2, 2)
    c2.commit(redelivered)
    c2.close()
    assert [r.value for r in redelivered] == [b"2", b"3"]
    assert [r.offset for r in redelivered] == [r.offset for r in got[1:]]


def test_two_groups_each_see_everything(bus: EventBus, topic: T, drain: D) -> None:
    t = topic("a")
    bus.ensure_topics([t])
    bus.publish(t, _records("1", "2"))
    a = bus.consumer([t], topic("ga"))
    got_a = drain(a, 2)
    a.commit(got_a)
    b = bus.consumer([t], topic("gb"))
    got_b = drain(b, 2)
    a.close()
    b.close()
    assert [r.value for r in got_a] == [b"1", b"2"]
    assert [r.value for r in got_b] == [b"1", b"2"]


def test_consumer_on_several_topics(bus: EventBus, topic: T, drain: D) -> None:
    t1, t2 = topic("behavior"), topic("items")
    bus.ensure_topics([t1, t2])
    bus.publish(t1, _records("b1", "b2"))
    bus.publish(t2, _records("i1"))
    c = bus.consumer([t1, t2], topic("g"))
    got = drain(c, 3)
    c.commit(got)
    c.close()
    assert sorted(r.value for r in got) == [b"b1", b"b2", b"i1"]
    assert [r.value for r in got if r.topic == t1] == [b"b1", b"b2"]


def test_poll_respects_max_records(bus: EventBus, topic: T, drain: D) -> None:
    t = topic("a")
    bus.ensure_topics([t])
    bus.publish(t, _records(*[str(i) for i in range(5)]))
    c = bus.consumer([t], topic("g"))
    got = drain(c, 5)
    c.close()
    assert [r.value for r in got] == [str(i).encode() for i in range(5)]
    c2 = bus.consumer([t], topic("g2"))
    batch = drain(c2, 2)
    more = c2.poll(max_records=2, timeout_s=5)
    c2.close()
    assert len(batch) == 2
    assert 1 <= len(more) <= 2


def test_closed_consumer_refuses_poll(bus: EventBus, topic: T, drain: D) -> None:
    t = topic("a")
    bus.ensure_topics([t])
    c = bus.consumer([t], topic("g"))
    c.close()
    c.close()  # closing twice is harmless
    with pytest.raises(InvalidInputError):
        c.poll(timeout_s=0.1)
