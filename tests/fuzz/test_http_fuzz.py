"""Schemathesis over every HTTP function's OpenAPI document: no 5xx, every 4xx with a reason.

Each operation gets `examples_per_operation()` schema-valid and as many schema-violating requests
(hypothesis, derandomized: the CI run is reproducible). Failures are collected per operation, so
one run reports every broken operation, not just the first.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from typing import Any

import hypothesis
import pytest
import schemathesis
from fuzz_targets import HTTP_FUNCTIONS, examples_per_operation
from schemathesis.generation.modes import GenerationMode
from zerorec.openapi_docs import PUBLISHED

# figures of the run, printed at the end of the session (the note quotes them)
TOTALS: Counter[str] = Counter()


def invariant_violation(status: int, body: bytes) -> str | None:
    """Why a response breaks the contract, or None: no 5xx; a 4xx says why in {"error": "..."}."""
    if status >= 500:
        return f"{status}: {body[:300]!r}"
    if 400 <= status < 500:
        try:
            reason = json.loads(body).get("error")
        except (ValueError, AttributeError):
            reason = None
        if not isinstance(reason, str) or not reason.strip():
            return f"{status} without a reason: {body[:300]!r}"
    return None


def _fuzz_operation(operation: Any, mode: GenerationMode, examples: int) -> tuple[int, list[str]]:
    cases = 0
    problems: list[str] = []

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking: report, go on
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal cases
        cases += 1
        response = case.call()
        problem = invariant_violation(response.status_code, response.content)
        if problem and len(problems) < 3:
            problems.append(f"{operation.label} [{mode.value}] body={str(case.body)[:200]} -> {problem}")

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()  # Unsatisfiable: a negative mode with nothing to violate (GET /health)
    return cases, problems


@pytest.mark.parametrize("function", HTTP_FUNCTIONS)
def test_fuzz_http_function(function: str, fuzz_apps: dict[str, Any]) -> None:
    app = fuzz_apps[function]
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    except Exception as exc:  # 404: the function does not publish a document (yet)
        if function in PUBLISHED:
            raise
        pytest.skip(f"{function} serves no /openapi.json yet ({type(exc).__name__})")
    examples = examples_per_operation()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        TOTALS["operations"] += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            cases, problems = _fuzz_operation(operation, mode, examples)
            TOTALS["cases"] += cases
            TOTALS[f"cases:{function}"] += cases
            failures += problems
    TOTALS["failures"] += len(failures)
    print(f"\nfuzz {function}: {TOTALS[f'cases:{function}']} cases; totals {dict(TOTALS)}")
    assert not failures, "\n".join(failures)


def test_every_published_document_is_served_and_valid(fuzz_apps: dict[str, Any]) -> None:
    for function in PUBLISHED:
        schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_apps[function])
        labels = [r.ok().label for r in schema.get_all_operations()]
        assert "GET /health" in labels and len(labels) >= 2, (function, labels)
