"""The events/ catalogue: every schema loads, every example is valid, bad data gets a readable reason."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from zerorec.errors import InvalidInputError, NotFoundError
from zerorec.event_schemas import MAX_DATA_BYTES, SchemaCatalogue, catalogue, events_dir

REPO = Path(__file__).resolve().parents[2]
BEHAVIOR = "dev.zerorec.behavior.v1"
EXPECTED_TYPES = {
    "dev.zerorec.behavior.v1",
    "dev.zerorec.impression.v1",
    "dev.zerorec.item.upserted.v1",
    "dev.zerorec.item.deleted.v1",
    "dev.zerorec.model.published.v1",
    "dev.zerorec.task.catalogue-import.v1",
    "dev.zerorec.task.rebuild-hot.v1",
    "dev.zerorec.task.export-events.v1",
    "dev.zerorec.task.feature-engineering.v1",
    "dev.zerorec.task.vector-generation.v1",
    "dev.zerorec.task.train.v1",
}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def behavior(**changes: object) -> dict:
    data = {"kind": "click", "user_id": "u1", "item_id": "i1", "timestamp": _iso(datetime.now(UTC))}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def reason(event_type: str, data: object) -> str:
    with pytest.raises(InvalidInputError) as info:
        catalogue().validate_data(event_type, data)
    return str(info.value)


def test_catalogue_has_every_type_with_a_valid_example() -> None:
    cat = catalogue()
    assert set(cat.types) == EXPECTED_TYPES
    for event_type in cat.types:
        schema = cat.schema(event_type)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["title"] == event_type
        assert schema["additionalProperties"] is False
        cat.validate_data(event_type, cat.example(event_type))


def test_readme_lists_every_type() -> None:
    readme = (REPO / "events" / "README.md").read_text()
    for event_type in EXPECTED_TYPES:
        assert f"`{event_type}`" in readme


def test_events_dir_found_from_the_package_and_overridable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert events_dir() == REPO / "events"
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "thing.v1.json").write_text(json.dumps({"type": "object"}))
    monkeypatch.setenv("ZEROREC_EVENTS_DIR", str(tmp_path))
    assert events_dir() == tmp_path
    assert catalogue().types == ["dev.zerorec.thing.v1"]
    with pytest.raises(NotFoundError):
        SchemaCatalogue(tmp_path / "nowhere")


def test_good_behavior_variants_pass() -> None:
    cat = catalogue()
    for kind in ("view", "click", "like", "add_to_cart", "purchase"):
        cat.validate_data(BEHAVIOR, behavior(kind=kind))
    cat.validate_data(BEHAVIOR, behavior(kind="rating", value=0.5))
    cat.validate_data(BEHAVIOR, behavior(kind="rating", value=5))
    cat.validate_data(BEHAVIOR, behavior(timestamp="2024-05-01T12:00:00.123+02:00", context={"page": "home"}))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (behavior(kind="hover"), "$.kind"),
        (behavior(user_id=""), "$.user_id"),
        (behavior(item_id="x" * 129), "$.item_id"),
        (behavior(user_id="a b"), "$.user_id"),
        (behavior(user_id=42), "$.user_id: 42 is not of type 'string'"),
        (behavior(timestamp=None), "'timestamp' is a required property"),
        (behavior(extra=1), "Additional properties are not allowed ('extra'"),
        (behavior(kind="rating"), "'value' (0.5..5) is required when kind is 'rating'"),
        (behavior(kind="rating", value=0.4), "$.value"),
        (behavior(kind="rating", value=5.5), "$.value"),
        (behavior(value=3), "'value' is only allowed when kind is 'rating'"),
        (behavior(timestamp="2024-05-01 12:00:00"), "$.timestamp"),
        (behavior(timestamp="2024-05-01T12:00:00"), "$.timestamp"),
        (behavior(timestamp="2024-02-30T12:00:00Z"), "$.timestamp"),
        (behavior(timestamp=1714564800000), "$.timestamp"),
        (behavior(context={"nested": {"a": 1}}), "$.context.nested"),
        (behavior(context={f"k{i}": i for i in range(33)}), "$.context"),
        (behavior(context={"k": "v" * 300}), "$.context.k"),
        ([1, 2], "$: [1, 2] is not of type 'object'"),
    ],
)
def test_bad_behavior_gets_a_reason_with_its_json_path(data: object, expected: str) -> None:
    message = reason(BEHAVIOR, data)
    assert message.startswith(f"invalid {BEHAVIOR} data: ")
    assert expected in message


def test_future_and_ancient_timestamps_are_refused() -> None:
    soon = datetime.now(UTC) + timedelta(minutes=4)
    catalogue().validate_data(BEHAVIOR, behavior(timestamp=_iso(soon)))
    later = datetime.now(UTC) + timedelta(minutes=6)
    assert "is in the future" in reason(BEHAVIOR, behavior(timestamp=_iso(later)))
    assert "too old (before 2000-01-01)" in reason(BEHAVIOR, behavior(timestamp="1999-12-31T23:59:59Z"))


def test_unknown_type_and_oversized_data() -> None:
    assert "unknown event type 'dev.zerorec.nope.v1'" in reason("dev.zerorec.nope.v1", {})
    huge = behavior(context={"k": "v"})
    huge["context"] = {f"k{i}": "v" * 250 for i in range(300)}
    assert f"> {MAX_DATA_BYTES}" in reason(BEHAVIOR, huge)


def test_many_errors_are_summarised_and_long_values_truncated() -> None:
    message = reason(BEHAVIOR, {"kind": "x" * 5000, "a": 1, "b": 2, "c": 3})
    assert "more)" in message
    assert len(message) < 1000


def test_other_types_reject_bad_data() -> None:
    cat = catalogue()
    item = copy.deepcopy(cat.example("dev.zerorec.item.upserted.v1"))
    item["categories"] = ["a", "a"]
    assert "$.categories" in reason("dev.zerorec.item.upserted.v1", item)
    assert "'item_id' is a required property" in reason("dev.zerorec.item.deleted.v1", {})
    bad_key = {"key": "../etc/passwd", "format": "csv"}
    assert "$.key" in reason("dev.zerorec.task.catalogue-import.v1", bad_key)
    assert "$.format" in reason("dev.zerorec.task.catalogue-import.v1", {"key": "a.csv", "format": "xlsx"})
    assert "$.n" in reason("dev.zerorec.task.rebuild-hot.v1", {"n": 0})
    assert "$.version" in reason("dev.zerorec.model.published.v1", {"name": "deepfm", "version": "a b"})
