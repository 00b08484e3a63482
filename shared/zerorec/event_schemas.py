"""The CloudEvent catalogue: one JSON Schema (draft 2020-12) per event type, for the `data` payload.

The schemas live in the repository's `events/schemas/<name>.json`; the event type is
`dev.zerorec.<name>` (e.g. `events/schemas/behavior.v1.json` -> `dev.zerorec.behavior.v1`).
`events_dir()` finds the catalogue folder, first match wins:

1. the `directory` argument;
2. `settings.events_dir` when the Settings object has such a field, else the `ZEROREC_EVENTS_DIR`
   environment variable (a deployed function image copies `events/` and points this at it);
3. `<repo>/events` relative to this package (checkout or editable install: shared/zerorec -> repo);
4. `<sys.prefix>/share/zerorec/events` (where a wheel's data-files would put it);
5. `./events` in the working directory.

Two keywords of our own extend the schemas (other validators ignore them):
`x-zerorec-time-window: true` on a timestamp string rejects values after now + 5 min or before
2000-01-01; `x-zerorec-message` on a subschema replaces the error message of its failures.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators

from zerorec.errors import InvalidInputError, NotFoundError

TYPE_PREFIX = "dev.zerorec."
MAX_DATA_BYTES = 64 * 1024  # encoded JSON size of one event's data
MAX_FUTURE_SKEW = timedelta(minutes=5)
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_REASONS = 3
_MAX_MESSAGE_CHARS = 200


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset; raise ValueError otherwise."""
    if not isinstance(value, str) or len(value) > 40 or len(value) < 20 or value[10] not in "Tt":
        raise ValueError(f"not an RFC 3339 timestamp: {value!r:.60}")
    parsed = datetime.fromisoformat(value.upper())
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp has no UTC offset: {value!r:.60}")
    return parsed


def check_time_window(value: str, *, now: datetime | None = None) -> str | None:
    """Return why `value` is outside [2000-01-01, now + 5 min], or None when it is inside (or unparsable)."""
    try:
        moment = parse_timestamp(value)
    except ValueError:
        return None  # the format check reports it
    now = now or datetime.now(UTC)
    if moment > now + MAX_FUTURE_SKEW:
        return f"{value} is in the future (more than {int(MAX_FUTURE_SKEW.total_seconds())} s after now)"
    if moment < EARLIEST_TIME:
        return f"{value} is too old (before {EARLIEST_TIME.date().isoformat()})"
    return None


def _time_window(
    validator: Any, enabled: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if enabled and isinstance(instance, str):
        reason = check_time_window(instance)
        if reason:
            yield ValidationError(reason)


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("date-time", raises=ValueError)(parse_timestamp)

_Validator = validators.extend(Draft202012Validator, {"x-zerorec-time-window": _time_window})


def _repo_events_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "events"


def events_dir(directory: str | Path | None = None, settings: Any = None) -> Path:
    """Find the catalogue folder (the one holding schemas/); see the module docstring for the order."""
    candidates: list[Path] = []
    if directory is not None:
        return Path(directory)
    configured = getattr(settings, "events_dir", None) if settings is not None else None
    configured = configured or os.environ.get("ZEROREC_EVENTS_DIR")
    if configured:
        return Path(configured)
    candidates += [_repo_events_dir(), Path(sys.prefix) / "share" / "zerorec" / "events"]
    candidates.append(Path.cwd() / "events")
    for candidate in candidates:
        if (candidate / "schemas").is_dir():
            return candidate
    raise NotFoundError(
        f"event catalogue not found (looked in {', '.join(map(str, candidates))}); set ZEROREC_EVENTS_DIR"
    )


def _format_error(error: ValidationError) -> str:
    message = error.schema.get("x-zerorec-message") if isinstance(error.schema, dict) else None
    message = message or error.message
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
    return f"{error.json_path}: {message}"


class SchemaCatalogue:
    """The event types of one catalogue folder, with a compiled validator per type."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        schema_dir = self.directory / "schemas"
        if not schema_dir.is_dir():
            raise NotFoundError(f"no schemas/ folder in {self.directory}")
        self._schemas: dict[str, dict[str, Any]] = {}
        self._validators: dict[str, Any] = {}
        for path in sorted(schema_dir.glob("*.json")):
            event_type = TYPE_PREFIX + path.name.removesuffix(".json")
            schema = json.loads(path.read_text(encoding="utf-8"))
            _Validator.check_schema(schema)
            self._schemas[event_type] = schema
            self._validators[event_type] = _Validator(schema, format_checker=_FORMATS)
        if not self._schemas:
            raise NotFoundError(f"no event schemas in {schema_dir}")

    @property
    def types(self) -> list[str]:
        """Every known event type, sorted."""
        return sorted(self._schemas)

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._schemas

    def schema(self, event_type: str) -> dict[str, Any]:
        """The JSON Schema of `event_type`'s data; NotFoundError for an unknown type."""
        try:
            return self._schemas[event_type]
        except KeyError:
            raise NotFoundError(f"unknown event type {event_type!r}") from None

    def example(self, event_type: str) -> dict[str, Any]:
        """The example payload shipped in events/examples/ for `event_type`."""
        self.schema(event_type)
        path = self.directory / "examples" / (event_type.removeprefix(TYPE_PREFIX) + ".json")
        return json.loads(path.read_text(encoding="utf-8"))

    def validate_data(self, event_type: str, data: Any) -> None:
        """Check `data` against `event_type`'s schema; raise InvalidInputError with readable reasons."""
        validator = self._validators.get(event_type)
        if validator is None:
            known = ", ".join(self.types)
            raise InvalidInputError(f"unknown event type {event_type!r} (known: {known})")
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str).encode())
        if size > MAX_DATA_BYTES:
            raise InvalidInputError(f"{event_type} data too large: {size} bytes > {MAX_DATA_BYTES}")
        errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
        if errors:
            reasons = "; ".join(_format_error(e) for e in errors[:_MAX_REASONS])
            more = f" (+{len(errors) - _MAX_REASONS} more)" if len(errors) > _MAX_REASONS else ""
            raise InvalidInputError(f"invalid {event_type} data: {reasons}{more}")


@lru_cache(maxsize=8)
def _cached(directory: Path) -> SchemaCatalogue:
    return SchemaCatalogue(directory)


def catalogue(directory: str | Path | None = None, settings: Any = None) -> SchemaCatalogue:
    """The catalogue found by `events_dir` (loaded once per folder)."""
    return _cached(events_dir(directory, settings).resolve())
