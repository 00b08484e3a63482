"""The item stream: catalogue changes as CloudEvents on the items topic.

Every change to the catalogue (the item function's admin endpoint, the worker's bulk import, any
producer) is an `dev.zerorec.item.upserted.v1` / `item.deleted.v1` event keyed by item_id on
`settings.topic_items`; the consumer applies them to the KV (item hash, fresh channel). The stream is
the single source of truth: nothing writes item hashes around it, so a replay rebuilds the store.

`publish_upserts` / `publish_deletes` validate every payload, produce the valid ones in acknowledged
chunks and report the rest; `rows_to_items` turns catalogue-file rows (CSV/Parquet) into payloads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from zerorec.cloudevents_io import new_event, to_kafka_record
from zerorec.errors import InvalidInputError
from zerorec.event_schemas import SchemaCatalogue, catalogue, parse_timestamp
from zerorec.storage.bus import EventBus, OutgoingRecord

UPSERT_TYPE = "dev.zerorec.item.upserted.v1"
DELETE_TYPE = "dev.zerorec.item.deleted.v1"
SOURCE_ADMIN = "/zerorec/item"
SOURCE_WORKER = "/zerorec/worker"
CHUNK = 1000
MAX_REASONS = 20
_CORE = ("item_id", "title", "categories", "created_at")


@dataclass
class PublishReport:
    """What a bulk publish did: counts and the first reasons for rejected entries."""

    published: int = 0
    rejected: int = 0
    reasons: list[dict[str, Any]] = field(default_factory=list)  # {"index", "reason"}, first MAX_REASONS
    ids: list[str] = field(default_factory=list)  # event ids of the published events

    def reject(self, index: int, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append({"index": index, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        return {"published": self.published, "rejected": self.rejected, "reasons": self.reasons}


def _publish(
    bus: EventBus,
    topic: str,
    event_type: str,
    payloads: Iterable[Any],
    source: str,
    cat: SchemaCatalogue | None,
) -> PublishReport:
    cat = cat or catalogue()
    report = PublishReport()
    pending: list[OutgoingRecord] = []
    pending_ids: list[str] = []

    def flush() -> None:
        bus.publish(topic, pending)  # raises unless all acknowledged: the caller sees the failure
        report.published += len(pending)
        report.ids += pending_ids
        pending.clear()
        pending_ids.clear()

    for index, payload in enumerate(payloads):
        try:
            cat.validate_data(event_type, payload)
        except InvalidInputError as exc:
            report.reject(index, str(exc))
            continue
        event = new_event(event_type, payload, source=source, subject=payload["item_id"])
        pending.append(to_kafka_record(event, key=payload["item_id"]))
        pending_ids.append(str(event["id"]))
        if len(pending) >= CHUNK:
            flush()
    if pending:
        flush()
    return report


def publish_upserts(
    bus: EventBus,
    topic: str,
    items: Iterable[Any],
    *,
    source: str = SOURCE_ADMIN,
    catalogue_: SchemaCatalogue | None = None,
) -> PublishReport:
    """Produce one item.upserted.v1 event per valid item payload (full replacement)."""
    return _publish(bus, topic, UPSERT_TYPE, items, source, catalogue_)


def publish_deletes(
    bus: EventBus,
    topic: str,
    item_ids: Iterable[str],
    *,
    reason: str | None = None,
    source: str = SOURCE_ADMIN,
    catalogue_: SchemaCatalogue | None = None,
) -> PublishReport:
    """Produce one item.deleted.v1 event per item id."""
    payloads = ({"item_id": i, **({"reason": reason} if reason else {})} for i in item_ids)
    return _publish(bus, topic, DELETE_TYPE, payloads, source, catalogue_)


# ---------------------------------------------------------------- catalogue files


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _scalar(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalar
        value = value.item()
    if isinstance(value, datetime):
        return _rfc3339(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _categories(value: Any) -> list[str]:
    if _missing(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            parsed = json.loads(text)
            return [str(c) for c in parsed]
        sep = "|" if "|" in text else ";" if ";" in text else ","
        return [c.strip() for c in text.split(sep) if c.strip()]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [str(c) for c in value if not _missing(c)]
    return [str(value)]


def _created_at(value: Any) -> str:
    value = _scalar(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 10**11 else value  # epoch ms or s in catalogue files
        return _rfc3339(datetime.fromtimestamp(seconds, UTC))
    text = str(value)
    if len(text) == 10:  # a bare date
        text += "T00:00:00Z"
    parse_timestamp(text)
    return text


def rows_to_items(rows: Iterable[Mapping[str, Any]], *, default_created_at: str) -> Iterable[Any]:
    """Catalogue rows -> item.upserted payloads. Columns item_id, title, categories (JSON list or
    `a|b|c`), created_at (RFC 3339, date or epoch); every other non-empty column is an attribute.
    A row that cannot be converted yields a dict with key "__error__" (reported, not produced)."""
    for row in rows:
        try:
            item_id = _scalar(row.get("item_id"))
            if _missing(item_id):
                raise InvalidInputError("missing item_id")
            title = _scalar(row.get("title"))
            created = row.get("created_at")
            payload = {
                "item_id": str(item_id),
                "title": str(item_id) if _missing(title) else str(title),
                "categories": list(dict.fromkeys(_categories(row.get("categories")))),
                "created_at": default_created_at if _missing(created) else _created_at(created),
                "attributes": {
                    str(k): _scalar(v) for k, v in row.items() if k not in _CORE and not _missing(_scalar(v))
                },
            }
        except (ValueError, TypeError, OverflowError) as exc:
            yield {"__error__": f"bad row: {exc}"}
            continue
        yield payload


def publish_rows(
    bus: EventBus,
    topic: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    default_created_at: str,
    source: str = SOURCE_WORKER,
    catalogue_: SchemaCatalogue | None = None,
) -> PublishReport:
    """Convert catalogue rows and publish them as upserts; unconvertible rows are reported."""
    cat = catalogue_ or catalogue()
    report = PublishReport()
    good: list[Any] = []
    index_of: list[int] = []
    for index, payload in enumerate(rows_to_items(rows, default_created_at=default_created_at)):
        if "__error__" in payload:
            report.reject(index, payload["__error__"])
            continue
        good.append(payload)
        index_of.append(index)
        if len(good) >= CHUNK:
            _merge(report, publish_upserts(bus, topic, good, source=source, catalogue_=cat), index_of)
            good, index_of = [], []
    if good:
        _merge(report, publish_upserts(bus, topic, good, source=source, catalogue_=cat), index_of)
    return report


def _merge(into: PublishReport, part: PublishReport, index_of: Sequence[int]) -> None:
    into.published += part.published
    into.ids += part.ids
    for r in part.reasons:
        into.reject(index_of[r["index"]], r["reason"])
    into.rejected += part.rejected - len(part.reasons)
