"""The internal serving functions' OpenAPI documents (recall, ranking, reranking): what each one
accepts and answers, built from the models of `zerorec.api` (docs/HOPS.md explains the batch).

Each is a zero-argument builder: `serving.dispatch(..., openapi=recall_openapi)` serves it at
`GET /openapi.json`, built on the first request for it (cold start pays nothing).
"""

from __future__ import annotations

from typing import Any

from zerorec.api import (
    HotRequest,
    HotResponse,
    PipelineRequest,
    PipelineResponse,
    RankingRequest,
    RankingResponse,
    RecallRequest,
    RecallResponse,
    RerankRequest,
    RerankResponse,
    function_openapi,
)

_BATCH = "Candidates travel as one columnar batch (CandidateColumns): parallel arrays, see docs/HOPS.md."


def recall_openapi() -> dict[str, Any]:
    return function_openapi(
        "ZeroRec recall (internal)",
        "Multi-channel candidates for a user. " + _BATCH,
        {
            "/": ("recall", "Merged candidates with ranking's signals", RecallRequest, RecallResponse, {}),
            "/hot": ("hot", "The hot list (the BFF's degraded path)", HotRequest, HotResponse, {}),
        },
    )


def ranking_openapi() -> dict[str, Any]:
    return function_openapi(
        "ZeroRec ranking (internal)",
        "DeepFM scores for recall's batch, one per candidate, same order. " + _BATCH,
        {
            "/": (
                "rank",
                "Score a candidate batch",
                RankingRequest,
                RankingResponse,
                {409: "the batch's signals come from another model version than the ranker's"},
            )
        },
    )


def reranking_openapi() -> dict[str, Any]:
    return function_openapi(
        "ZeroRec reranking (internal)",
        "MMR diversity, freshness and the seen filter over ranked candidates. " + _BATCH,
        {"/": ("rerank", "Top n of a ranked batch, with reasons", RerankRequest, RerankResponse, {})},
    )


def pipeline_openapi() -> dict[str, Any]:
    return function_openapi(
        "ZeroRec pipeline (internal, compact topology)",
        "Recall, ranking and reranking in one process: the reranked top n for a user.",
        {
            "/": ("pipeline", "Reranked items for a user", PipelineRequest, PipelineResponse, {}),
            "/hot": ("hot", "The hot list (the BFF's degraded path)", HotRequest, HotResponse, {}),
        },
    )
