"""CloudEvents 1.0 in and out of ZeroRec, on the cloudevents SDK (1.12).

- `new_event` builds an event of the catalogue (id uuid4, time now, JSON data).
- HTTP: `to_http_binary` / `to_http_structured` and `from_http` (either mode).
- Kafka (CloudEvents Kafka protocol binding, binary mode: `ce_*` headers, `content-type`, key =
  partition key): `to_kafka_record` -> bus `OutgoingRecord`, `from_kafka_record` <- bus `Record`.
- `kafka_source_event` builds the event the real KafkaSource makes of a record that is no CloudEvent;
  `dead_letter_event` adds the knativeerror* extensions Knative sets on dead-lettered events.
- `validate(event)` checks attributes and data at the edges and raises InvalidInputError.
- Batched HTTP content mode (`application/cloudevents-batch+json`, a JSON array of structured
  events): `batch_entry` (Kafka record -> one entry), `to_http_batch`, `from_http_batch`. ZeroRec
  uses it only between the local dispatcher and the consumer, as an opt-in throughput mode.
- `record_to_http_binary` is the fast path of the dispatcher for a binary-mode CloudEvent record
  (same headers and body as `to_http_binary(from_kafka_record(record, raw_data=True))`).

Attribute values are strings. Binary HTTP header values are percent-encoded as the CloudEvents HTTP
binding asks (space, `"`, `%` and anything outside printable ASCII) and decoded on the way in.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import orjson
from cloudevents import exceptions as ce_exceptions
from cloudevents import kafka as ce_kafka
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from cloudevents.http import from_http as _sdk_from_http
from cloudevents.http import from_json as _sdk_from_json

from zerorec.errors import InvalidInputError
from zerorec.event_schemas import (
    MAX_DATA_BYTES,
    TYPE_PREFIX,
    SchemaCatalogue,
    catalogue,
    check_time_window,
    parse_timestamp,
)
from zerorec.storage.bus import OutgoingRecord, Record

__all__ = [
    "BATCH",
    "JSON",
    "KAFKA_EVENT_TYPE",
    "PING_EVENT_TYPE",
    "TASK_TYPE_EXTENSION",
    "CloudEvent",
    "batch_entry",
    "dead_letter_event",
    "effective_type",
    "event_data",
    "from_http",
    "from_http_batch",
    "from_kafka_record",
    "is_cloudevent_record",
    "kafka_source_event",
    "new_event",
    "record_to_http_binary",
    "to_http_batch",
    "to_http_binary",
    "to_http_structured",
    "to_kafka_record",
    "type_name",
    "validate",
]

JSON = "application/json"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
MAX_BATCH_EVENTS = 1000
KAFKA_EVENT_TYPE = "dev.knative.kafka.event"
PING_EVENT_TYPE = "dev.knative.sources.ping"
# A PingSource sets this extension (ceOverrides) to the catalogue type its data follows.
TASK_TYPE_EXTENSION = "zerorectype"
MAX_BODY_BYTES = MAX_DATA_BYTES + 16 * 1024  # data plus attributes (structured mode)
MAX_ATTRIBUTE_CHARS = 2048
KNATIVE_ERROR_DATA_MAX = 1024

_REQUIRED = ("id", "source", "specversion", "type")
_TOO_DEEP = "malformed CloudEvent: JSON nested too deeply"
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_SAFE_HEADER_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
_NEEDS_QUOTING = re.compile(r'[^\x21-\x7e]|["%]')


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event(
    event_type: str,
    data: Any,
    *,
    source: str,
    subject: str | None = None,
    event_id: str | None = None,
    time: str | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> CloudEvent:
    """A CloudEvent with a uuid4 id, the current time and JSON `data` (not validated: see `validate`)."""
    attributes: dict[str, str] = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": time or _now_rfc3339(),
        "datacontenttype": JSON,
    }
    if subject is not None:
        attributes["subject"] = subject
    for name, value in (extensions or {}).items():
        if not _EXTENSION_NAME.match(name):
            raise InvalidInputError(f"bad extension name {name!r}: 1-20 lowercase letters or digits")
        attributes[name] = str(value)
    return CloudEvent(attributes, data)


# ---------------------------------------------------------------- validation


def effective_type(event: CloudEvent) -> str:
    """The catalogue type an event's data follows: its `type`, or for a PingSource event the
    `zerorectype` extension its manifest sets (PingSource's own type is dev.knative.sources.ping)."""
    event_type = str(event.get("type") or "")
    if event_type == PING_EVENT_TYPE and event.get(TASK_TYPE_EXTENSION):
        return str(event.get(TASK_TYPE_EXTENSION))
    return event_type


def event_data(event: CloudEvent) -> Any:
    """The event's data as a JSON value (bytes/str are parsed); InvalidInputError if it is not JSON."""
    data = event.get_data()
    if isinstance(data, bytes | bytearray | memoryview | str):
        if len(data) > MAX_DATA_BYTES:
            raise InvalidInputError(f"data too large: {len(data)} bytes > {MAX_DATA_BYTES}")
        try:
            return json.loads(bytes(data) if not isinstance(data, str) else data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"data is not valid JSON: {exc}") from None
    return data


def validate(event: CloudEvent, catalogue_: SchemaCatalogue | None = None) -> None:
    """Check an event at the edge: required attributes, a known type, its time, its data against the
    type's schema (with JSON path), data size. Raise InvalidInputError with a readable reason."""
    cat = catalogue_ or catalogue()
    for name in _REQUIRED:
        value = event.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidInputError(f"missing or empty CloudEvent attribute {name!r}")
    if event.get("specversion") != "1.0":
        raise InvalidInputError(f"unsupported specversion {event.get('specversion')!r} (want 1.0)")
    for name, value in event.get_attributes().items():
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_CHARS:
            raise InvalidInputError(f"attribute {name!r} too long: {len(value)} > {MAX_ATTRIBUTE_CHARS}")
    event_type = effective_type(event)
    if event_type not in cat:
        known = ", ".join(cat.types)
        raise InvalidInputError(f"unknown event type {event_type!r} (known: {known})")
    time = event.get("time")
    if time is not None:
        try:
            parse_timestamp(time)
        except ValueError as exc:
            raise InvalidInputError(f"bad CloudEvent time: {exc}") from None
        reason = check_time_window(time)
        if reason:
            raise InvalidInputError(f"bad CloudEvent time: {reason}")
    content_type = event.get("datacontenttype")
    if content_type is not None and not _is_json(str(content_type)):
        raise InvalidInputError(f"datacontenttype must be application/json, got {content_type!r}")
    cat.validate_data(event_type, event_data(event))


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or media.endswith("+json")


# ---------------------------------------------------------------- HTTP


def _data_bytes(data: Any) -> bytes:
    if data is None:
        return b""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def to_http_binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary mode: attributes as percent-encoded `ce-*` headers, data as the body."""
    headers, body = to_binary(event, data_marshaller=_data_bytes)
    encoded = {
        name: quote(str(value), safe=_SAFE_HEADER_CHARS) if name.startswith("ce-") else str(value)
        for name, value in headers.items()
    }
    return encoded, body if isinstance(body, bytes) else str(body).encode()


def to_http_structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Structured mode: the whole event as one JSON document (bytes data as data_base64)."""
    headers, body = to_structured(event)
    return dict(headers), body if isinstance(body, bytes) else str(body).encode()


def _raw(content: Any) -> Any:
    return content


def from_http(headers: Mapping[str, str], body: bytes | str | None, *, raw_data: bool = False) -> CloudEvent:
    """Decode an HTTP request in binary or structured mode. JSON data becomes a Python value unless
    `raw_data` (then the body bytes are kept). InvalidInputError on anything malformed or too large."""
    body = body or b""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidInputError(f"CloudEvent body too large: {len(body)} bytes > {MAX_BODY_BYTES}")
    lowered = {k.lower(): v for k, v in headers.items()}
    binary = "ce-specversion" in lowered
    if binary:
        lowered = {k: unquote(v) if k.startswith("ce-") else v for k, v in lowered.items()}
    elif not lowered.get("content-type", "").lower().startswith(STRUCTURED):
        raise InvalidInputError(
            "not a CloudEvent: no ce-specversion header and not application/cloudevents+json"
        )
    unmarshaller = _raw if raw_data and binary else None
    try:
        event = _sdk_from_http(lowered, body, data_unmarshaller=unmarshaller)
    except RecursionError:  # the SDK's json parser on a hostile document (thousands of nested arrays)
        raise InvalidInputError(_TOO_DEEP) from None
    except (ce_exceptions.GenericException, ValueError, TypeError) as exc:
        raise InvalidInputError(f"malformed CloudEvent: {exc}") from None
    if binary and not raw_data:
        content_type = event.get("datacontenttype")
        if content_type and _is_json(str(content_type)) and isinstance(event.get_data(), str | bytes):
            raise InvalidInputError("malformed CloudEvent: data is not valid JSON")
    _check_required(event)
    return event


def _check_required(event: CloudEvent) -> None:
    for name in _REQUIRED:
        if not event.get(name):
            raise InvalidInputError(f"malformed CloudEvent: attribute {name!r} is missing or empty")


def _header_value(value: str) -> str:
    return quote(value, safe=_SAFE_HEADER_CHARS) if _NEEDS_QUOTING.search(value) else value


def _binary_record_attributes(record: Record) -> tuple[dict[str, str], str | None] | None:
    """(attributes, content type) of a plain binary-mode CloudEvents 1.0 record, or None when the
    record needs the SDK path (structured, another specversion, missing attributes, not UTF-8)."""
    attributes: dict[str, str] = {}
    content_type = None
    try:
        for name, value in record.headers:
            lowered = name.lower()
            if lowered.startswith("ce_"):
                attributes[lowered[3:]] = value.decode()
            elif lowered == "content-type":
                content_type = value.decode()
    except UnicodeDecodeError:
        return None
    if attributes.get("specversion") != "1.0" or not all(attributes.get(n) for n in _REQUIRED):
        return None
    if len(record.value) > MAX_BODY_BYTES:
        return None
    return attributes, content_type


def record_to_http_binary(
    record: Record, overrides: Mapping[str, str] | None = None
) -> tuple[dict[str, str], bytes] | None:
    """Binary HTTP request of a binary-mode CloudEvent record (ceOverrides applied), without the SDK;
    None when the record needs the general path (`from_kafka_record` + `to_http_binary`)."""
    found = _binary_record_attributes(record)
    if found is None:
        return None
    attributes, content_type = found
    if overrides:
        attributes.update(overrides)
        content_type = attributes.pop("datacontenttype", content_type)
    headers = {"ce-" + name: _header_value(value) for name, value in attributes.items()}
    if content_type is not None:
        headers["content-type"] = content_type
    return headers, bytes(record.value)


def batch_entry(record: Record, event: CloudEvent | None = None) -> dict[str, Any]:
    """One structured-mode entry of a batch for `record` (or for `event`, its general decoding):
    JSON data inline as `data`, anything else as `data_base64`."""
    if event is not None:
        attributes = {k: str(v) for k, v in event.get_attributes().items()}
        raw = event.get_data()
    else:
        found = _binary_record_attributes(record)
        if found is None:
            raise InvalidInputError("record needs the general decoding (pass its event)")
        attributes, content_type = found
        if content_type is not None:
            attributes["datacontenttype"] = content_type
        raw = record.value
    entry: dict[str, Any] = dict(attributes)
    if raw is None:
        return entry
    if not isinstance(raw, bytes | bytearray | memoryview | str):
        entry["data"] = raw
        return entry
    content_type = attributes.get("datacontenttype")
    if content_type is None or _is_json(content_type):
        try:
            entry["data"] = orjson.loads(raw)
            return entry
        except orjson.JSONDecodeError:
            pass  # not JSON after all: sent as bytes, the consumer refuses it per event
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    entry["data_base64"] = base64.b64encode(data).decode("ascii")
    return entry


def to_http_batch(entries: list[dict[str, Any]]) -> tuple[dict[str, str], bytes]:
    """Batched content mode: one JSON array of structured events."""
    return {"content-type": BATCH}, orjson.dumps(entries)


def from_http_batch(body: bytes) -> list[CloudEvent | InvalidInputError]:
    """Decode a batched-mode body: one CloudEvent per entry, or the InvalidInputError of an entry
    that is malformed (so the others still go through). InvalidInputError for the whole body when it
    is not a JSON array of at most MAX_BATCH_EVENTS entries."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"batch is not valid JSON: {exc}") from None
    if not isinstance(doc, list):
        raise InvalidInputError("a CloudEvents batch is a JSON array of structured events")
    if len(doc) > MAX_BATCH_EVENTS:
        raise InvalidInputError(f"batch of {len(doc)} events is over the limit of {MAX_BATCH_EVENTS}")
    return [_from_batch_entry(entry) for entry in doc]


def _from_batch_entry(entry: Any) -> CloudEvent | InvalidInputError:
    if not isinstance(entry, dict):
        return InvalidInputError("malformed CloudEvent: a batch entry is not a JSON object")
    for name in _REQUIRED:
        value = entry.get(name)
        if not isinstance(value, str) or not value:
            return InvalidInputError(f"malformed CloudEvent: attribute {name!r} is missing or empty")
    if entry["specversion"] != "1.0":
        return InvalidInputError(f"unsupported specversion {entry['specversion']!r} (want 1.0)")
    attributes = {k: v for k, v in entry.items() if k not in ("data", "data_base64")}
    data: Any = entry.get("data")
    if "data_base64" in entry:
        try:
            data = base64.b64decode(entry["data_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            return InvalidInputError(f"malformed CloudEvent: bad data_base64: {exc}")
    try:
        return CloudEvent(attributes, data)
    except (ce_exceptions.GenericException, ValueError, TypeError) as exc:
        return InvalidInputError(f"malformed CloudEvent: {exc}")


# ---------------------------------------------------------------- Kafka


def to_kafka_record(event: CloudEvent, key: str | bytes | None = None) -> OutgoingRecord:
    """Kafka protocol binding, binary mode: `ce_*` headers, `content-type`, value = data bytes.
    The key is `key` if given, else the event's `partitionkey` extension (which is not sent as a header)."""
    attributes = dict(event.get_attributes())
    attributes.setdefault("datacontenttype", "")  # the SDK indexes it unconditionally
    shim = CloudEvent.create({k: str(v) for k, v in attributes.items()}, event.get_data())
    message = ce_kafka.to_binary(shim, data_marshaller=_data_bytes)
    record_key = key if key is not None else message.key
    if isinstance(record_key, str):
        record_key = record_key.encode()
    value = message.value if isinstance(message.value, bytes) else str(message.value).encode()
    return OutgoingRecord(value=value, key=record_key, headers=tuple(message.headers.items()))


def is_cloudevent_record(record: Record) -> bool:
    """True if the record claims to be a CloudEvent (binary `ce_specversion` header or structured)."""
    for name, value in record.headers:
        lowered = name.lower()
        if lowered == "ce_specversion":
            return True
        if lowered == "content-type" and value.decode("utf-8", "replace").lower().startswith(STRUCTURED):
            return True
    return False


def from_kafka_record(record: Record, *, raw_data: bool = False) -> CloudEvent:
    """Decode a record written with the Kafka protocol binding (binary or structured mode).
    InvalidInputError if it is not a CloudEvent or is malformed. JSON data is parsed unless `raw_data`."""
    if len(record.value) > MAX_BODY_BYTES:
        raise InvalidInputError(f"record too large: {len(record.value)} bytes > {MAX_BODY_BYTES}")
    headers = {name.lower(): value for name, value in record.headers}
    structured = "ce_specversion" not in headers
    content_type = headers.get("content-type", b"").decode("utf-8", "replace").lower()
    if structured and not content_type.startswith(STRUCTURED):
        raise InvalidInputError("record is not a CloudEvent (no ce_specversion header)")
    if not structured:
        missing = [name for name in _REQUIRED if not headers.get("ce_" + name)]
        if missing:
            names = ", ".join("ce_" + m for m in missing)
            raise InvalidInputError(f"malformed CloudEvent record: missing header(s) {names}")
    try:
        if structured:
            event = _sdk_from_json(record.value)
        else:
            message = ce_kafka.KafkaMessage(headers, None, record.value)
            unmarshaller = _raw if raw_data else _json_or_raw
            event = ce_kafka.from_binary(message, data_unmarshaller=unmarshaller)
    except RecursionError:
        raise InvalidInputError(_TOO_DEEP) from None
    except (ce_exceptions.GenericException, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"malformed CloudEvent record: {exc}") from None
    _check_required(event)
    if not structured and not raw_data:
        content_type = event.get("datacontenttype")
        if content_type and _is_json(str(content_type)) and isinstance(event.get_data(), bytes):
            raise InvalidInputError("malformed CloudEvent record: data is not valid JSON")
    return event


def _json_or_raw(value: bytes) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return value  # not JSON we can use: kept as bytes, refused by validation


def _extension_name(header: str) -> str:
    return "kafkaheader" + re.sub(r"[^a-z0-9]", "", header.lower())


def kafka_source_event(record: Record, *, namespace: str, source_name: str) -> CloudEvent:
    """The CloudEvent the real KafkaSource builds from a record that is no CloudEvent
    (eventing-kafka-broker InvalidCloudEventInterceptor): type dev.knative.kafka.event, id
    partition:<p>/offset:<o>, subject partition:<p>#<o>, key/partitionkey and kafkaheader* extensions."""
    stamp = record.timestamp_ms
    when = datetime.fromtimestamp(stamp / 1000, UTC) if stamp > 0 else datetime.now(UTC)
    attributes: dict[str, str] = {
        "specversion": "1.0",
        "id": f"partition:{record.partition}/offset:{record.offset}",
        "source": f"/apis/v1/namespaces/{namespace}/kafkasources/{source_name}#{record.topic}",
        "type": KAFKA_EVENT_TYPE,
        "subject": f"partition:{record.partition}#{record.offset}",
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if record.key is not None:
        key = record.key.decode("utf-8", "replace")
        attributes["key"] = key
        attributes["partitionkey"] = key
    for name, value in record.headers:
        if name.lower() == "content-type":
            attributes["datacontenttype"] = value.decode("utf-8", "replace")
        else:
            attributes[_extension_name(name)] = value.decode("utf-8", "replace")
    return CloudEvent(attributes, bytes(record.value))


def dead_letter_event(event: CloudEvent, *, destination: str, code: int, body: bytes) -> CloudEvent:
    """A copy of `event` with the extensions Knative sets on dead-lettered events:
    knativeerrordest (sink URL), knativeerrorcode (last HTTP status, 500 for no answer) and
    knativeerrordata (base64 of the answer's body, at most 1024 characters)."""
    attributes = dict(event.get_attributes())
    attributes["knativeerrordest"] = destination
    attributes["knativeerrorcode"] = str(code)
    attributes["knativeerrordata"] = base64.b64encode(body).decode("ascii")[:KNATIVE_ERROR_DATA_MAX]
    return CloudEvent(attributes, event.get_data())


def type_name(event_type: str) -> str:
    """`dev.zerorec.behavior.v1` -> `behavior.v1` (unchanged for foreign types)."""
    return event_type.removeprefix(TYPE_PREFIX)
