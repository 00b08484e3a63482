"""local/eventing: the knative/eventing manifests as the emulators read them, and the PingSource emulator."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from zerorec.cloudevents_io import effective_type, from_http, validate
from zerorec.errors import InvalidInputError
from zerorec.event_schemas import catalogue

from local.eventing import ping_source
from local.eventing.manifests import (
    DEFAULT_MANIFESTS,
    Delivery,
    PingSourceSpec,
    Sink,
    SinkResolver,
    kafka_sources,
    load_documents,
    parse_duration,
    ping_sources,
)

EVENTING = DEFAULT_MANIFESTS / "eventing"


def test_repo_kafka_sources_resolve_to_local_ports_and_the_dead_letter_topic() -> None:
    docs = load_documents([EVENTING])
    specs = {s.name: s for s in kafka_sources(docs, SinkResolver(docs, env={}))}
    assert set(specs) == {"behavior-to-consumer", "items-to-consumer", "models-to-recall"}
    models = specs["models-to-recall"]  # vector-generation's announcements reach recall
    assert models.topics == ("zerorec.models",) and models.initial_offset == "latest"
    assert models.sink == Sink(url="http://127.0.0.1:8081/events/vectors-published")
    behavior = specs["behavior-to-consumer"]
    assert behavior.topics == ("zerorec.behavior",) and specs["items-to-consumer"].topics == (
        "zerorec.items",
    )
    assert behavior.sink == Sink(url="http://127.0.0.1:8087")
    assert behavior.delivery.dead_letter == Sink(topic="zerorec.dead-letter")
    assert behavior.delivery.retry == 5 and behavior.delivery.backoff_policy == "exponential"
    assert behavior.ordering == "ordered" and behavior.initial_offset == "earliest"
    assert [behavior.delivery.backoff_s(n) for n in (1, 2, 3)] == pytest.approx([0.2, 0.4, 0.8])


def test_repo_ping_sources_send_valid_worker_tasks() -> None:
    docs = load_documents([EVENTING])
    specs = {s.name: s for s in ping_sources(docs, SinkResolver(docs, env={}))}
    sinks = {
        "rebuild-hot": "http://127.0.0.1:8088",  # worker
        "export-events": "http://127.0.0.1:8088",
        "feature-engineering": "http://127.0.0.1:8092",
        "nightly-training": "http://127.0.0.1:8091",
        "vector-generation": "http://127.0.0.1:8093",
    }
    assert set(specs) == set(sinks)
    cat = catalogue()
    for spec in specs.values():
        assert spec.sink == Sink(url=sinks[spec.name])
        event = ping_source.ping_event(spec, datetime.now(UTC))
        assert event["type"] == "dev.knative.sources.ping"
        assert event["source"] == f"/apis/v1/namespaces/zerorec/pingsources/{spec.name}"
        assert effective_type(event) in cat
        validate(event)


def test_sink_overrides_env_and_errors() -> None:
    resolver = SinkResolver(
        overrides={"worker": "http://w:1"}, env={"ZEROREC_SINK_MODEL_TRAINING": "http://m:2"}
    )
    ref = {"apiVersion": "serving.knative.dev/v1", "kind": "Service"}
    assert resolver.resolve({"ref": {**ref, "name": "worker"}}, "x") == Sink(url="http://w:1")
    assert resolver.resolve({"ref": {**ref, "name": "model-training"}}, "x") == Sink(url="http://m:2")
    assert resolver.resolve({"ref": {**ref, "name": "consumer"}, "uri": "/events"}, "x") == Sink(
        url="http://127.0.0.1:8087/events"
    )
    assert resolver.resolve({"uri": "http://elsewhere/x"}, "x") == Sink(url="http://elsewhere/x")
    with pytest.raises(InvalidInputError, match="no local port"):
        resolver.resolve({"ref": {**ref, "name": "mystery"}}, "x")
    with pytest.raises(InvalidInputError, match="KafkaSink 'nope' not found"):
        resolver.resolve({"ref": {"kind": "KafkaSink", "name": "nope"}}, "x")
    with pytest.raises(InvalidInputError, match="cannot deliver to Broker"):
        resolver.resolve({"ref": {"kind": "Broker", "name": "default"}}, "x")
    with pytest.raises(InvalidInputError, match="no sink"):
        resolver.resolve(None, "x")


def test_parse_duration_and_backoff() -> None:
    assert parse_duration("PT0.5S") == 0.5
    assert parse_duration("PT1M30S") == 90
    assert parse_duration("P1DT1H") == 90000
    for bad in ("", "P", "PT", "0.5S", "PT1X", "P1DT"):
        with pytest.raises(InvalidInputError):
            parse_duration(bad)
    linear = Delivery(backoff_policy="linear", backoff_delay_s=0.5)
    assert [linear.backoff_s(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]
    assert Delivery(backoff_delay_s=10).backoff_s(20) == 60.0  # capped


def test_next_tick_follows_cron_and_timezone() -> None:
    spec = PingSourceSpec(name="p", namespace="n", schedule="*/5 * * * *", sink=Sink(url="http://x"))
    assert ping_source.next_tick(spec, datetime(2024, 5, 1, 12, 3, tzinfo=UTC)) == datetime(
        2024, 5, 1, 12, 5, tzinfo=UTC
    )
    paris = PingSourceSpec(
        name="p", namespace="n", schedule="0 9 * * *", sink=Sink(url="x"), timezone="Europe/Paris"
    )
    assert ping_source.next_tick(paris, datetime(2024, 5, 1, 0, 0, tzinfo=UTC)) == datetime(
        2024, 5, 1, 7, 0, tzinfo=UTC
    )
    bad = PingSourceSpec(name="p", namespace="n", schedule="every minute", sink=Sink(url="x"))
    with pytest.raises(InvalidInputError, match="bad cron schedule"):
        ping_source.PingDispatcher([bad])


def test_once_fires_the_named_ping_source_to_the_sink(sink, capsys: pytest.CaptureFixture[str]) -> None:
    code = ping_source.main(
        ["--manifests", str(EVENTING), "--once", "rebuild-hot", "--sink", f"worker={sink.url}"]
    )
    assert code == 0
    (got,) = sink.requests
    event = from_http(got.headers, got.body)
    assert got.headers["ce-type"] == "dev.knative.sources.ping"
    assert got.headers["ce-zerorectype"] == "dev.zerorec.task.rebuild-hot.v1"
    assert got.headers["content-type"] == "application/json"
    assert event.get_data() == {"window_hours": 24, "n": 200}
    validate(event)
    assert "rebuild-hot: HTTP 200" in capsys.readouterr().out


def test_once_reports_failures(sink, tmp_path: Path) -> None:
    sink.respond = lambda received, n: (500, b"")
    assert (
        ping_source.main(
            ["--manifests", str(EVENTING), "--once", "export-events", "--sink", f"worker={sink.url}"]
        )
        == 1
    )
    assert (
        ping_source.main(["--manifests", str(EVENTING), "--once", "nope", "--sink", f"worker={sink.url}"])
        == 2
    )
    assert ping_source.main(["--manifests", str(tmp_path / "missing.yaml")]) == 2


def test_data_base64_and_the_run_loop(sink, tmp_path: Path) -> None:
    manifest = tmp_path / "ping.yaml"
    manifest.write_text(
        "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata: {name: every-second}\n"
        "spec:\n  schedule: '* * * * * *'\n  contentType: application/json\n"
        "  dataBase64: eyJuIjogNX0=\n  sink: {uri: " + sink.url + "/tick}\n"
    )
    (spec,) = ping_source.load([str(manifest)])
    assert spec.data == b'{"n": 5}' and spec.namespace == "default"
    dispatcher = ping_source.PingDispatcher([spec])
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    thread.start()
    got = sink.wait_for(2, timeout_s=5)  # croniter's optional seconds field: one tick a second
    dispatcher.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert got[0].path == "/tick" and json.loads(got[0].body) == {"n": 5}
    assert got[0].headers["ce-id"] != got[1].headers["ce-id"]
