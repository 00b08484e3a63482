"""What the fuzz tests run over, in one place.

`HTTP_FUNCTIONS`: every HTTP function of the project. The harness builds each one's app and fuzzes
every function that serves `GET /openapi.json`; one that does not yet is reported as skipped, so a
function that starts publishing its document joins without a change here.
`MUST_PUBLISH`: the functions that must serve one (zerorec.openapi_docs.PUBLISHED).

Examples per operation: `ZEROREC_FUZZ_EXAMPLES` (default 20, the CI run: about a minute on a loaded
2-core machine); `ZEROREC_FUZZ_EXAMPLES=500` is the long run. Each operation is fuzzed with
schema-valid requests (positive) and schema-violating ones (negative), that many of each.
"""

from __future__ import annotations

import os

HTTP_FUNCTIONS = (
    "recommender",
    "behavior",
    "item",
    "user",
    "consumer",
    "worker",
    "recall",
    "ranking",
    "reranking",
)


def examples_per_operation() -> int:
    return max(1, int(os.environ.get("ZEROREC_FUZZ_EXAMPLES", "20")))
