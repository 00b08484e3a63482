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

Validation speed: each schema is also compiled to Python code (fastjsonschema) when it only uses
keywords that mean the same in draft-07 and 2020-12 and its time windows sit on top-level
properties. A payload the compiled check accepts (and whose time windows hold) is valid; anything
else goes through jsonschema (the reference), which gives the readable reasons. The compiled check is
a fast path, never the judge of a rejection.
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

import fastjsonschema
import orjson
from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators

from zerorec.errors import InvalidInputError, NotFoundError

TYPE_PREFIX = "dev.zerorec."
MAX_DATA_BYTES = 64 * 1024  # encoded JSON size of one event's data
# Nesting limit of an event's data: far above any real payload (behavior context is 2 deep), far below
# what breaks a recursive encoder or validator (orjson stops at 255, jsonschema and json near 1000).
MAX_DATA_DEPTH = 32
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


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True when `value` (parsed JSON) nests lists/objects more than `limit` deep. Iterative: a hostile
    document cannot exhaust the stack here, and it stops at the first path past the limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


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


# Keywords whose meaning draft-07 (fastjsonschema) and 2020-12 (jsonschema) share, as used here.
_FAST_KEYWORDS = frozenset(
    [
        "$schema",
        "$id",
        "title",
        "description",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "const",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "maxProperties",
        "minProperties",
        "propertyNames",
        "items",
        "maxItems",
        "minItems",
        "uniqueItems",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "format",
        "x-zerorec-message",
    ]
)
_FastCheck = Any  # a compiled validator: raises fastjsonschema.JsonSchemaException


def _is_timestamp(value: str) -> bool:
    try:
        parse_timestamp(value)
    except ValueError:
        return False
    return True


def _fast_plan(schema: Mapping[str, Any]) -> tuple[_FastCheck, tuple[str, ...]] | None:
    """(compiled check, top-level properties with a time window), or None when only jsonschema will do."""
    windows = tuple(
        name
        for name, sub in (schema.get("properties") or {}).items()
        if isinstance(sub, dict) and sub.get("x-zerorec-time-window")
    )

    def supported(node: Any, top_property: bool) -> bool:
        if isinstance(node, list):
            return all(supported(x, False) for x in node)
        if not isinstance(node, dict):
            return True
        for name, value in node.items():
            if name == "x-zerorec-time-window":
                if not top_property:
                    return False
            elif name not in _FAST_KEYWORDS:
                return False
            elif name in ("properties",):
                top = node is schema
                if not all(supported(sub, top) for sub in value.values()):
                    return False
            elif name == "enum" or name == "const":
                continue
            elif not supported(value, False):
                return False
        return True

    if not supported(schema, False):
        return None
    try:
        check = fastjsonschema.compile(dict(schema), formats={"date-time": _is_timestamp})
    except fastjsonschema.JsonSchemaException:
        return None
    return check, windows


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
        self._fast: dict[str, tuple[_FastCheck, tuple[str, ...]]] = {}
        for path in sorted(schema_dir.glob("*.json")):
            event_type = TYPE_PREFIX + path.name.removesuffix(".json")
            schema = json.loads(path.read_text(encoding="utf-8"))
            _Validator.check_schema(schema)
            self._schemas[event_type] = schema
            self._validators[event_type] = _Validator(schema, format_checker=_FORMATS)
            plan = _fast_plan(schema)
            if plan is not None:
                self._fast[event_type] = plan
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
        if nested_deeper_than(data, MAX_DATA_DEPTH):
            raise InvalidInputError(f"{event_type} data nested more than {MAX_DATA_DEPTH} levels deep")
        try:
            size = len(orjson.dumps(data, default=str))
        except TypeError:  # keys that are no strings, integers past 64 bits: measure as before
            size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str).encode())
        if size > MAX_DATA_BYTES:
            raise InvalidInputError(f"{event_type} data too large: {size} bytes > {MAX_DATA_BYTES}")
        if self.fast_valid(event_type, data):
            return
        errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
        if errors:
            reasons = "; ".join(_format_error(e) for e in errors[:_MAX_REASONS])
            more = f" (+{len(errors) - _MAX_REASONS} more)" if len(errors) > _MAX_REASONS else ""
            raise InvalidInputError(f"invalid {event_type} data: {reasons}{more}")

    def fast_valid(self, event_type: str, data: Any) -> bool:
        """True when the compiled check accepts `data` and its time windows hold (then it is valid);
        False means "ask jsonschema", not "invalid"."""
        plan = self._fast.get(event_type)
        if plan is None:
            return False
        check, windows = plan
        try:
            check(data)
        except fastjsonschema.JsonSchemaException:
            return False
        return all(
            not isinstance(data.get(name), str) or check_time_window(data[name]) is None for name in windows
        )

    def reference_errors(self, event_type: str, data: Any) -> list[str]:
        """Every reason jsonschema (the reference) gives against `data`, without the fast path."""
        errors = sorted(self._validators[event_type].iter_errors(data), key=lambda e: list(e.absolute_path))
        return [_format_error(e) for e in errors]


@lru_cache(maxsize=8)
def _cached(directory: Path) -> SchemaCatalogue:
    return SchemaCatalogue(directory)


def catalogue(directory: str | Path | None = None, settings: Any = None) -> SchemaCatalogue:
    """The catalogue found by `events_dir` (loaded once per folder)."""
    return _cached(events_dir(directory, settings).resolve())
