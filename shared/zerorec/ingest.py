"""Behavior acceptance: validate tracked events and produce them to the behavior topic.

`BehaviorIngest.accept_json(body)` takes one event, a JSON array of events or `{"events": [...]}`;
`accept_cloudevent(event)` takes one CloudEvent (binary or structured HTTP). Every payload is checked
against `events/schemas/behavior.v1.json`; the valid ones become `dev.zerorec.behavior.v1` CloudEvents
(Kafka binary binding, key = user_id) and go out in ONE `bus.publish` call, which returns only once the
broker acknowledged every record (else DeliveryError / BackendUnavailableError: nothing is reported
as accepted). Invalid payloads get a per-event reason and are not produced.

Exactly-once note: a 503 means "not acknowledged", not "not written": some of those events may still
reach the topic. Retrying is safe all the same: a plain JSON event's id is derived from the request's
content and the event's place in it (`behavior_event_ids`), a CloudEvent keeps the client's id, and the
consumer applies each id once.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from zerorec.cloudevents_io import CloudEvent, event_data, new_event, to_kafka_record, validate
from zerorec.errors import InvalidInputError
from zerorec.event_schemas import MAX_DATA_DEPTH, SchemaCatalogue, catalogue, nested_deeper_than
from zerorec.storage.bus import EventBus, OutgoingRecord

BEHAVIOR_TYPE = "dev.zerorec.behavior.v1"
IMPRESSION_TYPE = "dev.zerorec.impression.v1"  # zerorec.ctr: `{"kind": "impression", ...}` payloads
ACCEPTED_TYPES = (BEHAVIOR_TYPE, IMPRESSION_TYPE)
SOURCE = "/zerorec/behavior"
DEFAULT_MAX_BATCH = 1000
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
# One bulk import (POST /events/import), produced max_batch at a time: sized to finish well inside
# the function's 10 s request timeout (~3 s of validation for 50,000 events on one busy core) and
# its 256 MiB (~35 MB of parsed rows at the body limit).
IMPORT_MAX_EVENTS = 50_000
IMPORT_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_EVENT_ID_CHARS = 128  # a CloudEvent id, as the OpenAPI documents bound it


# Namespace of content-derived event ids (uuid5): the same event posted twice has one id.
_EVENT_ID_NAMESPACE = uuid.UUID("6f1c1d4e-5a0e-4f4b-9d59-0c2f3b1e7a10")


def behavior_event_ids(payloads: Sequence[Any]) -> list[str]:
    """Ids of the plain JSON events of one request: uuid5 of the request's canonical JSON and the
    event's index. Resending a request that got 503 gives the same ids (never counted twice), while
    two identical events in one request stay two events."""
    digest = hashlib.sha256(orjson.dumps(list(payloads), option=orjson.OPT_SORT_KEYS)).hexdigest()
    return [str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{digest}:{k}")) for k in range(len(payloads))]


class BatchTooLargeError(InvalidInputError):
    """More events in one request than the configured maximum."""


@dataclass
class IngestResult:
    """Per-event outcome of one request, in request order."""

    ids: list[str | None] = field(default_factory=list)  # event id if accepted, else None
    errors: list[dict[str, Any]] = field(default_factory=list)  # {"index", "reason"}

    @property
    def accepted(self) -> int:
        return sum(1 for i in self.ids if i is not None)

    def to_json(self) -> dict[str, Any]:
        """The response body: counts, the accepted ids by position and the rejections."""
        return {
            "accepted": self.accepted,
            "rejected": len(self.errors),
            "ids": self.ids,
            "errors": self.errors,
        }


def check_api_key(expected: str, given: str | None) -> bool:
    """True when no key is configured or `given` matches it (constant-time)."""
    if not expected:
        return True
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def parse_batch(body: bytes, max_batch: int = DEFAULT_MAX_BATCH) -> list[Any]:
    """A JSON body as a list of payloads: one object, an array, or {"events": [...]}."""
    if not body.strip():
        raise InvalidInputError('empty body: send one event, a JSON array or {"events": [...]}')
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"body is not valid JSON: {exc}") from None
    if nested_deeper_than(doc, MAX_DATA_DEPTH + 2):  # + {"events": [...]}: refused before any encoding
        raise InvalidInputError(f"body nested too deeply (an event's data: at most {MAX_DATA_DEPTH} levels)")
    if isinstance(doc, dict) and set(doc) == {"events"}:
        doc = doc["events"]
        if not isinstance(doc, list):
            raise InvalidInputError("'events' must be a JSON array")
    payloads = doc if isinstance(doc, list) else [doc]
    if not payloads:
        raise InvalidInputError("no events in the batch")
    if len(payloads) > max_batch:
        raise BatchTooLargeError(f"batch of {len(payloads)} events is over the limit of {max_batch}")
    return payloads


class BehaviorIngest:
    """Validates behavior payloads and produces them, acknowledged, to `topic`."""

    def __init__(
        self,
        bus: EventBus,
        topic: str,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        catalogue_: SchemaCatalogue | None = None,
    ) -> None:
        self.bus = bus
        self.topic = topic
        self.max_batch = max_batch
        self.catalogue = catalogue_ or catalogue()

    def check(self, payload: Any) -> str | None:
        """Why `payload` is not a valid behavior (or impression) event, or None."""
        try:
            self.catalogue.validate_data(event_type_of(payload), payload)
        except InvalidInputError as exc:
            return str(exc)
        return None

    def accept_payloads(
        self, payloads: Sequence[Any], ids: Sequence[str | None] | None = None, first_index: int = 0
    ) -> IngestResult:
        """Validate each payload, produce the valid ones in one acknowledged publish. `ids`: the
        events' own ids (an import's `event_id`s; None: derived from the request's content)."""
        result = IngestResult()
        records: list[OutgoingRecord] = []
        derived = behavior_event_ids(payloads) if ids is None or None in ids else []
        ids = [given or derived[k] for k, given in enumerate(ids or [None] * len(payloads))]
        for index, payload in enumerate(payloads, first_index):
            reason = self.check(payload) or _id_problem(ids[index - first_index])
            if reason is not None:
                result.ids.append(None)
                result.errors.append({"index": index, "reason": reason})
                continue
            event = new_event(
                event_type_of(payload),
                payload,
                source=SOURCE,
                subject=payload["user_id"],
                event_id=ids[index - first_index],
            )
            records.append(to_kafka_record(event, key=payload["user_id"]))
            result.ids.append(event["id"])
        self.bus.publish(self.topic, records)  # raises unless every record was acknowledged
        return result

    def accept_import(self, payloads: Sequence[Any], ids: Sequence[str | None]) -> IngestResult:
        """A bulk import (POST /events/import): at most IMPORT_MAX_EVENTS payloads, validated and
        produced like a batch, `max_batch` per acknowledged publish; the ids a row does not carry are
        derived from the whole import's content, so re-posting an import after a 503 produces the
        same ids (the consumer applies each once)."""
        if not payloads:
            raise InvalidInputError("no events in the import")
        if len(payloads) > IMPORT_MAX_EVENTS:
            raise BatchTooLargeError(
                f"import of {len(payloads)} events is over the limit of {IMPORT_MAX_EVENTS}"
            )
        if None in ids:
            derived = behavior_event_ids(payloads)
            ids = [given or derived[k] for k, given in enumerate(ids)]
        result = IngestResult()
        for start in range(0, len(payloads), self.max_batch):
            stop = start + self.max_batch
            part = self.accept_payloads(payloads[start:stop], ids[start:stop], first_index=start)
            result.ids += part.ids
            result.errors += part.errors
        return result

    def accept_json(self, body: bytes) -> IngestResult:
        """Parse a JSON body (one, array, or {"events": [...]}) and accept it."""
        return self.accept_payloads(parse_batch(body, self.max_batch))

    def accept_cloudevent(self, event: CloudEvent) -> IngestResult:
        """Accept one client-built behavior CloudEvent; its id is kept (client retries dedup)."""
        validate(event, self.catalogue)
        if event["type"] not in ACCEPTED_TYPES:
            takes = " or ".join(ACCEPTED_TYPES)
            raise InvalidInputError(f"this endpoint takes {takes} events, got {event['type']!r}")
        payload = event_data(event)
        fresh = new_event(
            event["type"],
            payload,
            source=str(event["source"]),
            subject=payload["user_id"],
            event_id=str(event["id"]),
            time=event.get("time"),
        )
        self.bus.publish(self.topic, [to_kafka_record(fresh, key=payload["user_id"])])
        return IngestResult(ids=[str(event["id"])])


def _id_problem(event_id: str) -> str | None:
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID_CHARS:
        return f"event_id must be a string of 1..{MAX_EVENT_ID_CHARS} characters"
    return None


def event_type_of(payload: Any) -> str:
    """The event type of a plain JSON payload: an impression says `"kind": "impression"`."""
    impression = isinstance(payload, dict) and payload.get("kind") == "impression"
    return IMPRESSION_TYPE if impression else BEHAVIOR_TYPE
