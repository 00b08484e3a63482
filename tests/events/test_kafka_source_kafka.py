"""The KafkaSource emulator as a process on real Kafka: SIGKILL while the sink holds a record, restart,
every record is delivered (the held one again: at-least-once), the malformed one is dead-lettered,
SIGTERM ends it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from zerorec.cloudevents_io import from_kafka_record, new_event, to_kafka_record
from zerorec.settings import Settings
from zerorec.storage.bus import OutgoingRecord

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

MANIFEST = """\
apiVersion: sources.knative.dev/v1
kind: KafkaSource
metadata: {{name: it-source, namespace: zerorec}}
spec:
  bootstrapServers: [ignored:9092]
  topics: [{topic}]
  consumerGroup: {group}
  initialOffset: earliest
  delivery:
    retry: 1
    backoffPolicy: exponential
    backoffDelay: PT0.05S
    deadLetterSink: {{ref: {{apiVersion: eventing.knative.dev/v1alpha1, kind: KafkaSink, name: it-dlq}}}}
  sink: {{ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: consumer}}}}
---
apiVersion: eventing.knative.dev/v1alpha1
kind: KafkaSink
metadata: {{name: it-dlq, namespace: zerorec}}
spec: {{topic: {dlq}, bootstrapServers: [ignored:9092]}}
"""


def _click(item: str) -> OutgoingRecord:
    data = {"kind": "click", "user_id": "u1", "item_id": item, "timestamp": "2024-05-01T12:00:00Z"}
    return to_kafka_record(new_event("dev.zerorec.behavior.v1", data, source="/zerorec/behavior"), key="u1")


def _start(manifest: Path, sink_url: str, kafka: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ZEROREC_EVENT_BUS": "kafka", "ZEROREC_KAFKA_BOOTSTRAP": kafka}
    command = [sys.executable, "-m", "local.eventing.kafka_source", "--manifests", str(manifest)]
    command += ["--sink", f"consumer={sink_url}", "--progress-every", "1"]
    return subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def test_sigkill_before_commit_redelivers_and_sigterm_stops(
    kafka_server: str, namespace: str, sink, tmp_path
):
    topic, dlq, group = f"it.{namespace}.behavior", f"it.{namespace}.dlq", f"it-{namespace}"
    manifest = tmp_path / "sources.yaml"
    manifest.write_text(MANIFEST.format(topic=topic, dlq=dlq, group=group))
    from zerorec.storage.bus_kafka import KafkaEventBus

    bus = KafkaEventBus.from_settings(Settings(event_bus="kafka", kafka_bootstrap=kafka_server))
    bus.ensure_topics([topic, dlq])
    malformed = OutgoingRecord(value=b"{}", key=b"u1", headers=(("ce_specversion", b"1.0"),))
    bus.publish(topic, [_click("i1"), _click("i2"), malformed, _click("i3")])

    release = threading.Event()

    def respond(received, n):
        if n == 1:
            release.wait(30)
        return 200, b""

    sink.respond = respond
    first = _start(manifest, sink.url, kafka_server)
    try:
        sink.wait_for(1, timeout_s=60)
        first.send_signal(signal.SIGKILL)  # dies while the sink holds i1: nothing may be committed
        first.wait(timeout=10)
    finally:
        release.set()
        if first.poll() is None:
            first.kill()
    second = _start(manifest, sink.url, kafka_server)
    try:
        # A SIGKILLed member keeps its partitions until its session times out (librdkafka: 45 s).
        try:
            got = sink.wait_for(4, timeout_s=120)
        except AssertionError as exc:
            second.terminate()
            raise AssertionError(
                f"{exc}; dispatcher log:\n{second.communicate(timeout=30)[1][-4000:]}"
            ) from None
        deadline = time.monotonic() + 30
        letters = []
        consumer = bus.consumer([dlq], f"checker-{namespace}")
        while not letters and time.monotonic() < deadline:
            letters = consumer.poll(10, 1.0)
        consumer.close()
    finally:
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=30)
    assert second.returncode == 0, stderr
    assert [json.loads(r.body)["item_id"] for r in got] == ["i1", "i1", "i2", "i3"]
    assert "stopped: delivered=3" in stderr and "dlq=1" in stderr
    (letter,) = letters
    event = from_kafka_record(letter, raw_data=True)
    assert event["type"] == "dev.knative.kafka.event" and event["knativeerrorcode"] == "400"
    # Everything was committed: a new member of the group gets nothing.
    consumer = bus.consumer([topic], group)
    try:
        leftover = [r for _ in range(5) for r in consumer.poll(10, 1.0)]
    finally:
        consumer.close()
        bus.close()
    assert leftover == []
