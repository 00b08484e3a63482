"""The compiled fast path of SchemaCatalogue.validate_data never accepts what jsonschema rejects."""

from __future__ import annotations

import copy
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from zerorec.errors import InvalidInputError
from zerorec.event_schemas import catalogue

CAT = catalogue()
ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    0.25,
    7.5,
    10**30,
    "",
    " ",
    "a b",
    "x" * 300,
    "\x00",
    "ok-id",
    [],
    ["a"],
    {},
    {"k": 1},
    "2024-05-01T12:00:00Z",
    "2024-05-01 12:00:00Z",
    "2024-13-01T12:00:00Z",
    "1999-12-31T23:59:59Z",
    (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    "2024-05-01T12:00:00",
]


def mutations(example: dict[str, Any], rng: random.Random, n: int) -> list[Any]:
    """Payloads near `example`: a field dropped, replaced by an odd value, an extra field, nesting."""
    out: list[Any] = [example, [], "text", None]
    keys = list(example)
    for _ in range(n):
        doc = copy.deepcopy(example)
        for _ in range(rng.randint(1, 3)):
            action = rng.random()
            if action < 0.2 and doc:
                doc.pop(rng.choice(list(doc)), None)
            elif action < 0.8:
                doc[rng.choice(keys)] = copy.deepcopy(rng.choice(ODD_VALUES))
            elif action < 0.9:
                doc[rng.choice(["extra", "value", "kind", "context"])] = copy.deepcopy(rng.choice(ODD_VALUES))
            else:
                target = rng.choice(keys)
                if isinstance(doc.get(target), dict):
                    doc[target][rng.choice(["a", "b c", "x" * 70])] = copy.deepcopy(rng.choice(ODD_VALUES))
        out.append(doc)
    return out


@pytest.mark.parametrize("event_type", CAT.types)
def test_fast_path_agrees_with_jsonschema(event_type: str) -> None:
    rng = random.Random(event_type)
    example = CAT.example(event_type)
    assert CAT.fast_valid(event_type, example)  # the fast path is really taken for the valid example
    kinds = ["view", "click", "like", "add_to_cart", "purchase", "rating"]
    if event_type.endswith("behavior.v1"):
        variants = [{**example, "kind": k} for k in kinds] + [{**example, "kind": "rating", "value": 3}]
    else:
        variants = [example]
    accepted = rejected = 0
    for base in variants:
        for doc in mutations(base, rng, 300):
            reference = CAT.reference_errors(event_type, doc)
            if CAT.fast_valid(event_type, doc):
                assert reference == [], f"fast path accepted {doc!r}: {reference}"
                accepted += 1
            if reference:
                rejected += 1
                with pytest.raises(InvalidInputError):
                    CAT.validate_data(event_type, doc)
            else:
                CAT.validate_data(event_type, doc)
    assert accepted and rejected  # both sides were exercised


def test_rejection_reasons_still_come_from_jsonschema() -> None:
    doc = {"kind": "rating", "user_id": "u1", "item_id": "i1", "timestamp": "2024-05-01T12:00:00Z"}
    with pytest.raises(
        InvalidInputError, match=re.escape("'value' (0.5..5) is required when kind is 'rating'")
    ):
        CAT.validate_data("dev.zerorec.behavior.v1", doc)
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds")
    doc = {"kind": "click", "user_id": "u1", "item_id": "i1", "timestamp": future}
    with pytest.raises(InvalidInputError, match="in the future"):
        CAT.validate_data("dev.zerorec.behavior.v1", doc)
