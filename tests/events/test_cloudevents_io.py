"""zerorec.cloudevents_io: building, HTTP binary/structured, Kafka binding, validation at the edges."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from zerorec.cloudevents_io import (
    KAFKA_EVENT_TYPE,
    PING_EVENT_TYPE,
    CloudEvent,
    dead_letter_event,
    effective_type,
    from_http,
    from_kafka_record,
    is_cloudevent_record,
    kafka_source_event,
    new_event,
    to_http_binary,
    to_http_structured,
    to_kafka_record,
    validate,
)
from zerorec.errors import InvalidInputError
from zerorec.storage.bus import Record

BEHAVIOR = "dev.zerorec.behavior.v1"


def click(**changes: object) -> dict:
    data = {"kind": "click", "user_id": "u1", "item_id": "i9", "timestamp": "2024-05-01T12:00:00Z"}
    data.update(changes)
    return data


def event(**kwargs: object) -> CloudEvent:
    return new_event(
        BEHAVIOR, kwargs.pop("data", click()), source="/zerorec/behavior", subject="u1", **kwargs
    )


def as_record(outgoing: object, partition: int = 0, offset: int = 0) -> Record:
    return Record(
        topic="t",
        partition=partition,
        offset=offset,
        value=outgoing.value,  # type: ignore[attr-defined]
        key=outgoing.key,  # type: ignore[attr-defined]
        headers=outgoing.headers,  # type: ignore[attr-defined]
    )


def test_new_event_has_uuid_id_time_and_json_content_type() -> None:
    e = event(extensions={"traceid": "abc"})
    assert len(e["id"]) == 36 and e["id"] != event()["id"]
    assert e["specversion"] == "1.0" and e["type"] == BEHAVIOR and e["subject"] == "u1"
    assert e["datacontenttype"] == "application/json" and e["traceid"] == "abc"
    assert datetime.fromisoformat(e["time"]) <= datetime.now(UTC)
    validate(e)
    with pytest.raises(InvalidInputError, match="bad extension name"):
        event(extensions={"Bad-Name": "x"})


def test_http_binary_round_trip_with_percent_encoded_headers() -> None:
    e = event(extensions={"note": 'héllo "w" 100%'})
    headers, body = to_http_binary(e)
    assert headers["ce-type"] == BEHAVIOR and headers["ce-id"] == e["id"]
    assert headers["content-type"] == "application/json"
    assert headers["ce-note"] == "h%C3%A9llo%20%22w%22%20100%25"
    headers["ce-note"].encode("ascii")
    assert json.loads(body) == click()
    back = from_http(headers, body)
    assert back.get_attributes() == e.get_attributes()
    assert back.get_data() == click()
    assert from_http(headers, body, raw_data=True).get_data() == body


def test_http_structured_round_trip() -> None:
    e = event()
    headers, body = to_http_structured(e)
    assert headers["content-type"].startswith("application/cloudevents+json")
    assert json.loads(body)["data"] == click()
    back = from_http(headers, body)
    assert back.get_attributes() == e.get_attributes() and back.get_data() == click()
    validate(back)


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"content-type": "application/json"}, b"{}", "not a CloudEvent"),
        ({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s"}, b"{}", "malformed CloudEvent"),
        (
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/s",
                "ce-type": "t",
                "content-type": "application/json",
            },
            b"{not json",
            "data is not valid JSON",
        ),
        ({"content-type": "application/cloudevents+json"}, b"{oops", "malformed CloudEvent"),
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "type": "t"}',
            "malformed",
        ),
        ({"ce-specversion": "1.0"}, b"x" * (200 * 1024), "too large"),
    ],
)
def test_from_http_rejects_bad_requests(headers: dict, body: bytes, expected: str) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        from_http(headers, body)


def test_kafka_binary_round_trip_and_key() -> None:
    e = event()
    out = to_kafka_record(e, key="u1")
    headers = dict(out.headers)
    assert out.key == b"u1"
    assert headers["ce_type"] == BEHAVIOR.encode() and headers["content-type"] == b"application/json"
    assert "ce_partitionkey" not in headers and "ce_datacontenttype" not in headers
    record = as_record(out)
    assert is_cloudevent_record(record)
    back = from_kafka_record(record)
    assert back.get_attributes() == e.get_attributes() and back.get_data() == click()
    validate(back)
    assert from_kafka_record(record, raw_data=True).get_data() == out.value
    keyed = to_kafka_record(event(extensions={"partitionkey": "from-ext"}))
    assert keyed.key == b"from-ext"


def test_kafka_structured_record_is_decoded() -> None:
    e = event()
    _, body = to_http_structured(e)
    record = Record(
        "t", 0, 0, body, None, (("content-type", b"application/cloudevents+json; charset=utf-8"),)
    )
    assert is_cloudevent_record(record)
    back = from_kafka_record(record)
    assert (
        back["id"] == e["id"] and back["datacontenttype"] == "application/json" and back.get_data() == click()
    )


def test_malformed_kafka_records_are_refused() -> None:
    plain = Record("t", 0, 0, b"hello", b"k", (("trace", b"1"),))
    assert not is_cloudevent_record(plain)
    with pytest.raises(InvalidInputError, match="not a CloudEvent"):
        from_kafka_record(plain)
    no_id = Record(
        "t", 0, 0, b"{}", None, (("ce_specversion", b"1.0"), ("ce_type", b"x"), ("ce_source", b"/s"))
    )
    with pytest.raises(InvalidInputError, match=r"missing header.*ce_id"):
        from_kafka_record(no_id)
    bad_json = Record(
        "t",
        0,
        0,
        b"{nope",
        None,
        (
            ("ce_specversion", b"1.0"),
            ("ce_id", b"1"),
            ("ce_type", b"x"),
            ("ce_source", b"/s"),
            ("content-type", b"application/json"),
        ),
    )
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        from_kafka_record(bad_json)
    structured = Record("t", 0, 0, b"{oops", None, (("content-type", b"application/cloudevents+json"),))
    with pytest.raises(InvalidInputError, match="malformed"):
        from_kafka_record(structured)


def test_kafka_source_event_has_the_knative_attributes() -> None:
    record = Record(
        topic="zerorec.behavior",
        partition=2,
        offset=17,
        value=b"raw bytes",
        key=b"u1",
        headers=(("content-type", b"text/plain"), ("X-Trace_Id", b"abc")),
        timestamp_ms=1714564800000,
    )
    e = kafka_source_event(record, namespace="zerorec", source_name="behavior-to-consumer")
    assert e["type"] == KAFKA_EVENT_TYPE
    assert e["source"] == "/apis/v1/namespaces/zerorec/kafkasources/behavior-to-consumer#zerorec.behavior"
    assert e["id"] == "partition:2/offset:17"
    assert e["subject"] == "partition:2#17"
    assert e["time"] == "2024-05-01T12:00:00.000Z"
    assert e["key"] == "u1" and e["partitionkey"] == "u1"
    assert e["kafkaheaderxtraceid"] == "abc"
    assert e["datacontenttype"] == "text/plain"
    assert e.get_data() == b"raw bytes"


def test_dead_letter_event_carries_knative_error_extensions() -> None:
    e = event()
    letter = dead_letter_event(e, destination="http://127.0.0.1:8087", code=500, body=b"boom" * 1000)
    assert letter["id"] == e["id"] and letter.get_data() == e.get_data()
    assert letter["knativeerrordest"] == "http://127.0.0.1:8087"
    assert letter["knativeerrorcode"] == "500"
    assert len(letter["knativeerrordata"]) == 1024
    assert base64.b64decode(letter["knativeerrordata"][:8]) == b"boombo"
    assert "knativeerrordest" not in e.get_attributes()


def test_validate_checks_attributes_type_time_and_data() -> None:
    with pytest.raises(InvalidInputError, match=re.escape("unknown event type 'dev.zerorec.nope.v1'")):
        validate(new_event("dev.zerorec.nope.v1", {}, source="/s"))
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with pytest.raises(InvalidInputError, match=r"bad CloudEvent time: .* in the future"):
        validate(event(time=future))
    with pytest.raises(InvalidInputError, match="too old"):
        validate(event(time="1999-01-01T00:00:00Z"))
    with pytest.raises(InvalidInputError, match="bad CloudEvent time"):
        validate(event(time="yesterday"))
    with pytest.raises(InvalidInputError, match=r"\$\.kind"):
        validate(event(data=click(kind="stare")))
    with pytest.raises(InvalidInputError, match="too large"):
        validate(event(data=b"x" * (65 * 1024)))
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        validate(event(data=b"{oops"))
    wrong_ct = event()
    wrong_ct["datacontenttype"] = "text/csv"
    with pytest.raises(InvalidInputError, match="datacontenttype"):
        validate(wrong_ct)
    empty_source = event()
    empty_source["source"] = ""
    with pytest.raises(InvalidInputError, match="'source'"):
        validate(empty_source)


def test_ping_events_are_validated_against_their_task_type() -> None:
    ping = CloudEvent(
        {
            "type": PING_EVENT_TYPE,
            "source": "/apis/v1/namespaces/zerorec/pingsources/rebuild-hot",
            "zerorectype": "dev.zerorec.task.rebuild-hot.v1",
            "datacontenttype": "application/json",
        },
        b'{"window_hours": 24, "n": 200}',
    )
    assert effective_type(ping) == "dev.zerorec.task.rebuild-hot.v1"
    validate(ping)
    ping.data = b'{"n": -1}'
    with pytest.raises(InvalidInputError, match=r"\$\.n"):
        validate(ping)
    bare = CloudEvent({"type": PING_EVENT_TYPE, "source": "/s"}, None)
    with pytest.raises(InvalidInputError, match=re.escape("unknown event type 'dev.knative.sources.ping'")):
        validate(bare)


# ---------------------------------------------------------------- dispatcher fast paths and batches


def _record(event: CloudEvent, key: str = "u1") -> Record:
    out = to_kafka_record(event, key=key)
    return Record(topic="t", partition=0, offset=7, value=out.value, key=out.key, headers=out.headers)


def test_record_to_http_binary_matches_the_sdk_path() -> None:
    from zerorec.cloudevents_io import record_to_http_binary

    data = {"kind": "click", "user_id": 'u 1%"é', "item_id": "i1", "timestamp": "2024-05-01T12:00:00Z"}
    event = new_event("dev.zerorec.behavior.v1", data, source="/a b", subject="ü s", extensions={"ext": "x"})
    record = _record(event)
    fast = record_to_http_binary(record)
    assert fast == to_http_binary(from_kafka_record(record, raw_data=True))
    headers, _ = record_to_http_binary(record, {"source": "/over"})
    assert headers["ce-source"] == "/over"
    assert fast is not None and from_http(*fast).get_data() == data
    broken = Record("t", 0, 1, b"{}", None, (("ce_specversion", b"1.0"), ("ce_type", b"x")))
    assert record_to_http_binary(broken) is None  # missing id/source: the general path refuses it


def test_batch_round_trip_keeps_each_event_and_isolates_malformed_entries() -> None:
    from zerorec.cloudevents_io import batch_entry, from_http_batch, to_http_batch

    data = {"kind": "click", "user_id": "u1", "item_id": "i1", "timestamp": "2024-05-01T12:00:00Z"}
    event = new_event("dev.zerorec.behavior.v1", data, source="/s", subject="u1")
    good = batch_entry(_record(event))
    raw = Record(
        "t",
        0,
        2,
        b"\xff\x00",
        None,
        (
            ("ce_specversion", b"1.0"),
            ("ce_id", b"r"),
            ("ce_source", b"/s"),
            ("ce_type", b"t"),
            ("content-type", b"application/octet-stream"),
        ),
    )
    binary = batch_entry(raw)
    assert "data_base64" in binary and "data" not in binary
    headers, body = to_http_batch([good, binary, {"id": "x"}])
    assert headers["content-type"] == "application/cloudevents-batch+json"
    decoded = from_http_batch(body)
    assert decoded[0]["id"] == event["id"] and decoded[0].get_data() == data
    assert decoded[1].get_data() == b"\xff\x00"
    assert isinstance(decoded[2], InvalidInputError)
    with pytest.raises(InvalidInputError):
        from_http_batch(b'{"not": "a list"}')
