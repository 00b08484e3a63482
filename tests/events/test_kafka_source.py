"""local/eventing/kafka_source.py on the in-process bus, delivering to a real HTTP sink."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator

import pytest
from zerorec.cloudevents_io import from_http, from_kafka_record, new_event, to_kafka_record
from zerorec.storage.bus import EventBus, OutgoingRecord, Record
from zerorec.storage.bus_memory import MemoryEventBus

from local.eventing.kafka_source import KafkaSourceDispatcher
from local.eventing.manifests import Delivery, KafkaSourceSpec, Sink

TOPIC = "zerorec.behavior"
DLQ = "zerorec.dead-letter"
GROUP = "consumer-group"
DLQ_SINK = Sink(topic=DLQ)


def spec(url: str, retry: int = 2, dead_letter: Sink | None = DLQ_SINK, **kw: object) -> KafkaSourceSpec:
    delivery = Delivery(
        retry=retry, backoff_policy="exponential", backoff_delay_s=0.01, timeout_s=5, dead_letter=dead_letter
    )
    return KafkaSourceSpec(
        name="behavior-to-consumer",
        namespace="zerorec",
        topics=(TOPIC,),
        consumer_group=GROUP,
        sink=Sink(url=url),
        delivery=delivery,
        initial_offset="earliest",
        **kw,  # type: ignore[arg-type]
    )


class Running:
    """A dispatcher in a thread."""

    def __init__(self, dispatcher: KafkaSourceDispatcher) -> None:
        self.dispatcher = dispatcher
        self.thread = threading.Thread(target=dispatcher.run, daemon=True)
        self.thread.start()

    def wait(self, predicate: object, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out; stats {self.dispatcher.stats}"
            time.sleep(0.01)

    def stop(self) -> None:
        self.dispatcher.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.fixture
def bus() -> Iterator[EventBus]:
    b = MemoryEventBus()
    b.ensure_topics([TOPIC, DLQ])
    yield b
    b.close()


def behavior_record(user: str, item: str) -> OutgoingRecord:
    data = {"kind": "click", "user_id": user, "item_id": item, "timestamp": "2024-05-01T12:00:00Z"}
    event = new_event("dev.zerorec.behavior.v1", data, source="/zerorec/behavior", subject=user)
    return to_kafka_record(event, key=user)


def start(bus: EventBus, s: KafkaSourceSpec) -> Running:
    return Running(KafkaSourceDispatcher(s, bus, poll_timeout_s=0.05, progress_every_s=0.2))


def drain(bus: EventBus, topic: str, group: str = "checker") -> list[Record]:
    consumer = bus.consumer([topic], group)
    try:
        out: list[Record] = []
        while batch := consumer.poll(100, 0.2):
            out += batch
        return out
    finally:
        consumer.close()


def committed_position(bus: EventBus) -> list[Record]:
    """What a fresh member of the dispatcher's group would get: everything not yet committed."""
    return drain(bus, TOPIC, GROUP)


def test_records_are_delivered_in_order_as_binary_cloudevents(bus: EventBus, sink) -> None:
    records = [behavior_record("u1", f"i{n}") for n in range(20)]
    bus.publish(TOPIC, records)
    running = start(bus, spec(sink.url))
    got = sink.wait_for(20)
    running.wait(lambda: running.dispatcher.stats.committed == 20)
    running.stop()
    assert [json.loads(r.body)["item_id"] for r in got] == [f"i{n}" for n in range(20)]
    first = got[0]
    assert first.headers["ce-specversion"] == "1.0"
    assert first.headers["ce-type"] == "dev.zerorec.behavior.v1"  # a CloudEvent record keeps its own type
    assert first.headers["ce-source"] == "/zerorec/behavior"
    assert first.headers["content-type"] == "application/json"
    original = from_kafka_record(Record(TOPIC, 0, 0, records[0].value, records[0].key, records[0].headers))
    assert first.headers["ce-id"] == original["id"]
    assert committed_position(bus) == []
    assert running.dispatcher.stats.delivered == 20


def test_plain_record_gets_the_kafka_source_attributes(bus: EventBus, sink) -> None:
    bus.publish(TOPIC, [OutgoingRecord(value=b"hello", key=b"u7", headers=(("X-Trace", b"t1"),))])
    running = start(bus, spec(sink.url, ce_overrides={"origin": "local"}))
    (got,) = sink.wait_for(1)
    running.stop()
    event = from_http(got.headers, got.body, raw_data=True)
    assert event["type"] == "dev.knative.kafka.event"
    assert event["source"] == f"/apis/v1/namespaces/zerorec/kafkasources/behavior-to-consumer#{TOPIC}"
    assert event["id"] == "partition:0/offset:0"
    assert event["subject"] == "partition:0#0"
    assert event["key"] == "u7" and event["partitionkey"] == "u7"
    assert event["kafkaheaderxtrace"] == "t1"
    assert event["origin"] == "local"
    assert event.get_data() == b"hello"


def test_sink_failing_then_answering_gets_the_record_once_after_retries(bus: EventBus, sink) -> None:
    sink.respond = lambda received, n: (500, b"busy") if n <= 2 else (200, b"")
    bus.publish(TOPIC, [behavior_record("u1", "i1"), behavior_record("u1", "i2")])
    running = start(bus, spec(sink.url, retry=2))
    running.wait(lambda: running.dispatcher.stats.committed == 2)
    running.stop()
    bodies = [json.loads(r.body)["item_id"] for r in sink.requests]
    assert bodies == ["i1", "i1", "i1", "i2"]  # two failures, then one success, then the next record
    stats = running.dispatcher.stats
    assert (stats.delivered, stats.failed_attempts, stats.dead_lettered) == (2, 2, 0)
    assert drain(bus, DLQ) == []


def test_sink_that_always_fails_sends_the_record_to_the_dead_letter_topic(bus: EventBus, sink) -> None:
    sink.respond = lambda received, n: (
        (503, b"consumer down") if json.loads(received.body)["item_id"] == "bad" else (200, b"")
    )
    bus.publish(TOPIC, [behavior_record("u1", "bad"), behavior_record("u1", "good")])
    running = start(bus, spec(sink.url, retry=3))
    running.wait(lambda: running.dispatcher.stats.committed == 2)
    running.stop()
    assert [json.loads(r.body)["item_id"] for r in sink.requests] == ["bad"] * 4 + ["good"]
    (letter,) = drain(bus, DLQ)
    event = from_kafka_record(letter)
    assert event["type"] == "dev.zerorec.behavior.v1" and event.get_data()["item_id"] == "bad"
    assert event["knativeerrordest"] == sink.url
    assert event["knativeerrorcode"] == "503"
    assert base64.b64decode(event["knativeerrordata"]) == b"consumer down"
    assert letter.key == b"u1"
    assert committed_position(bus) == []  # both offsets committed: the stream went on


def test_client_error_is_not_retried(bus: EventBus, sink) -> None:
    sink.respond = lambda received, n: (400, b'{"error": "unknown event type"}')
    bus.publish(TOPIC, [behavior_record("u1", "i1")])
    running = start(bus, spec(sink.url, retry=5))
    running.wait(lambda: running.dispatcher.stats.dead_lettered == 1)
    running.stop()
    assert len(sink.requests) == 1
    assert from_kafka_record(drain(bus, DLQ)[0])["knativeerrorcode"] == "400"


def test_malformed_record_goes_to_the_dead_letters_without_reaching_the_sink(bus: EventBus, sink) -> None:
    broken = OutgoingRecord(value=b"{}", key=b"u1", headers=(("ce_specversion", b"1.0"), ("ce_type", b"x")))
    bus.publish(TOPIC, [broken, behavior_record("u1", "after")])
    running = start(bus, spec(sink.url))
    running.wait(lambda: running.dispatcher.stats.committed == 2)
    running.stop()
    assert [json.loads(r.body)["item_id"] for r in sink.requests] == ["after"]
    (letter,) = drain(bus, DLQ)
    event = from_kafka_record(letter, raw_data=True)
    assert event["type"] == "dev.knative.kafka.event" and event["id"] == "partition:0/offset:0"
    assert event["knativeerrorcode"] == "400"
    assert b"missing header" in base64.b64decode(event["knativeerrordata"])
    assert event.get_data() == b"{}"


def test_unreachable_sink_without_dead_letter_sink_drops_after_retries(bus: EventBus) -> None:
    bus.publish(TOPIC, [behavior_record("u1", "i1")])
    running = start(bus, spec("http://127.0.0.1:9", retry=1, dead_letter=None))
    running.wait(lambda: running.dispatcher.stats.dropped == 1)
    running.stop()
    assert running.dispatcher.stats.failed_attempts == 2
    assert committed_position(bus) == []


def test_offset_is_not_committed_before_the_sink_answered(bus: EventBus, sink) -> None:
    release = threading.Event()
    answered = threading.Event()

    def respond(received, n):
        if n == 1:
            release.wait(10)
            answered.set()
        return 200, b""

    sink.respond = respond
    bus.publish(TOPIC, [behavior_record("u1", "i1"), behavior_record("u1", "i2")])
    running = start(bus, spec(sink.url))
    sink.wait_for(1)
    running.dispatcher.kill()  # the dispatcher dies while the sink holds the first record
    release.set()
    answered.wait(5)
    running.thread.join(timeout=10)
    assert not running.thread.is_alive()
    assert running.dispatcher.stats.committed == 0
    # A new member of the group gets both records again (at-least-once) and delivers them.
    again = start(bus, spec(sink.url))
    again.wait(lambda: again.dispatcher.stats.committed == 2)
    again.stop()
    assert [json.loads(r.body)["item_id"] for r in sink.requests] == ["i1", "i1", "i2"]
    assert committed_position(bus) == []


def test_stop_during_backoff_leaves_the_record_uncommitted(bus: EventBus, sink) -> None:
    sink.respond = lambda received, n: (500, b"")
    bus.publish(TOPIC, [behavior_record("u1", "i1")])
    slow = Delivery(retry=5, backoff_delay_s=30, dead_letter=Sink(topic=DLQ))
    s = spec(sink.url)
    running = start(bus, KafkaSourceSpec(**{**s.__dict__, "delivery": slow}))
    sink.wait_for(1)
    began = time.monotonic()
    running.stop()
    assert time.monotonic() - began < 5  # the 30 s backoff was interrupted
    assert running.dispatcher.stats.committed == 0
    assert drain(bus, DLQ) == []
    assert len(committed_position(bus)) == 1


def test_progress_lines_are_reported(bus: EventBus, sink) -> None:
    lines: list[str] = []
    bus.publish(TOPIC, [behavior_record("u1", "i1")])
    dispatcher = KafkaSourceDispatcher(
        spec(sink.url), bus, poll_timeout_s=0.05, progress_every_s=0.05, on_progress=lines.append
    )
    running = Running(dispatcher)
    running.wait(lambda: any("delivered=1" in line for line in lines))
    running.stop()
    assert "dlq=0" in lines[-1] and "stopped" in lines[-1]


# ---------------------------------------------------------------- batched mode (local opt-in)


def start_batched(bus: EventBus, s: KafkaSourceSpec, batch_size: int = 10) -> Running:
    return Running(
        KafkaSourceDispatcher(
            s, bus, poll_timeout_s=0.05, progress_every_s=0.2, delivery_mode="batch", batch_size=batch_size
        )
    )


def test_single_mode_is_one_binary_event_per_request_by_default(bus: EventBus, sink) -> None:
    bus.publish(TOPIC, [behavior_record("u1", f"i{n}") for n in range(3)])
    running = start(bus, spec(sink.url))
    running.wait(lambda: running.dispatcher.stats.committed == 3)
    running.stop()
    assert running.dispatcher.delivery_mode == "single"
    assert [r.headers["ce-type"] for r in sink.requests] == ["dev.zerorec.behavior.v1"] * 3
    assert all(r.headers["content-type"] == "application/json" for r in sink.requests)


def test_batched_mode_retries_only_the_failed_events_and_dead_letters_the_refused(
    bus: EventBus, sink
) -> None:
    def respond(received, n):
        entries = json.loads(received.body)
        results = []
        for e in entries:
            item = e["data"]["item_id"]
            if item == "i1":
                results.append({"id": e["id"], "status": 400, "error": "refused"})
            elif item == "i2" and n == 1:
                results.append({"id": e["id"], "status": 503, "error": "busy"})
            else:
                results.append({"id": e["id"], "status": 200, "applied": True})
        return 200, json.dumps({"results": results}).encode()

    sink.respond = respond
    bus.publish(TOPIC, [behavior_record("u1", f"i{n}") for n in range(4)])
    running = start_batched(bus, spec(sink.url))
    running.wait(lambda: running.dispatcher.stats.committed == 4)
    running.stop()
    assert all(r.headers["content-type"] == "application/cloudevents-batch+json" for r in sink.requests)
    sent = [[e["data"]["item_id"] for e in json.loads(r.body)] for r in sink.requests]
    assert sent == [["i0", "i1", "i2", "i3"], ["i2"]]  # the retry carries only the retryable event
    first = json.loads(sink.requests[0].body)[0]
    assert first["type"] == "dev.zerorec.behavior.v1" and first["specversion"] == "1.0" and first["id"]
    (letter,) = drain(bus, DLQ)
    event = from_kafka_record(letter)
    assert event.get_data()["item_id"] == "i1" and event["knativeerrorcode"] == "400"
    stats = running.dispatcher.stats
    assert (stats.delivered, stats.dead_lettered, stats.failed_attempts) == (3, 1, 2)
    assert committed_position(bus) == []


def test_batched_mode_whole_request_failure_is_retried_then_dead_lettered(bus: EventBus, sink) -> None:
    sink.respond = lambda received, n: (500, b"down")
    bus.publish(TOPIC, [behavior_record("u1", f"i{n}") for n in range(2)])
    running = start_batched(bus, spec(sink.url, retry=1))
    running.wait(lambda: running.dispatcher.stats.committed == 2)
    running.stop()
    assert len(sink.requests) == 2  # one try and one retry, each with both events
    assert [from_kafka_record(r)["knativeerrorcode"] for r in drain(bus, DLQ)] == ["500", "500"]


def test_batched_mode_stop_during_backoff_commits_nothing_undone(bus: EventBus, sink) -> None:
    sink.respond = lambda received, n: (503, b"")
    bus.publish(TOPIC, [behavior_record("u1", "i1")])
    slow = Delivery(retry=5, backoff_delay_s=30, dead_letter=Sink(topic=DLQ))
    s = spec(sink.url)
    running = start_batched(bus, KafkaSourceSpec(**{**s.__dict__, "delivery": slow}))
    sink.wait_for(1)
    running.stop()
    assert running.dispatcher.stats.committed == 0 and drain(bus, DLQ) == []
    assert len(committed_position(bus)) == 1


def test_dispatcher_retries_when_kafka_is_down_at_start(tmp_path) -> None:
    """Kafka unreachable at start: log and retry with backoff (it used to exit with status 2)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ZEROREC_EVENT_BUS": "kafka", "ZEROREC_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    env["PYTHONPATH"] = str(repo)
    log_path = tmp_path / "dispatcher.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "local.eventing.kafka_source", "--source", "behavior-to-consumer",
             "--sink", "consumer=http://127.0.0.1:9/"],
            cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "retrying" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, f"exited {proc.returncode}: {log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        assert proc.poll() is None  # still alive, waiting for the broker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
