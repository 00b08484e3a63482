"""Request/response models of every HTTP contract (docs/CONTRACTS.md), shared by all functions.

Requests are strict (`extra="forbid"`, no type coercion, bounded sizes): a server validates what it
receives with `Model.model_validate_json(body)` and answers 4xx with `validation_reason(exc)`.
Responses ignore unknown fields, so a function can add a field without breaking its callers.
Every model defers building its validator to first use (`defer_build`): a function only pays, at
cold start, for the models it uses.

`python -m zerorec.api [FILE]` writes the recommender's OpenAPI document.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from typing_extensions import TypedDict

MAX_BODY_BYTES = 64 * 1024
# ranking and reranking take candidate batches (up to MAX_CANDIDATES items with their channel scores:
# 500 are ~75 KB): their bodies may be larger than a public request's.
MAX_BATCH_BODY_BYTES = 1024 * 1024
MAX_EXCLUDE = 1000
MAX_GUEST_ITEMS = 50  # a guest session's recent items (realtime.RECENT_MAX)
MAX_CANDIDATES = 2000
MAX_SIGNAL_CHANNELS = 16

Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\w.:@\-]+$")]
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ContextValue = Annotated[str, StringConstraints(max_length=256)] | int | float | bool


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    error: str = Field(description="what was wrong with the request")


class HealthResponse(_Response):
    """`GET /health` of any function."""

    status: Literal["ok", "loading", "degraded"] = "ok"
    model_version: str | None = None


# --------------------------------------------------------------------------- public: the BFF


class RecommendRequest(_Request):
    """`POST /recommend`."""

    user_id: UserId | None = Field(
        default=None,
        description="the user to recommend for (letters, digits, _ . : @ -); omit it for a guest",
    )
    recent_items: list[Id] = Field(
        default_factory=list,
        max_length=MAX_GUEST_ITEMS,
        description="a guest's session (no user_id): the items seen in it, newest first",
    )
    n: int = Field(default=10, ge=1, le=100, description="how many items to return")
    context: dict[ContextKey, ContextValue] = Field(
        default_factory=dict, max_length=32, description="request context (device, page, hour...)"
    )
    exclude: list[Id] = Field(
        default_factory=list, max_length=MAX_EXCLUDE, description="item ids never to return"
    )

    @model_validator(mode="after")
    def _a_user_or_a_session(self) -> RecommendRequest:
        if self.user_id is None and not self.recent_items:
            raise ValueError("give user_id, or recent_items for a guest")
        if self.user_id is not None and self.recent_items:
            raise ValueError("recent_items is for guests: send it without user_id")
        return self


class ItemMeta(BaseModel):
    """Item metadata as the item function returns it (open: extra fields are kept)."""

    model_config = ConfigDict(extra="allow", defer_build=True)
    title: str | None = None
    categories: list[str] = Field(default_factory=list)
    created_at: str | None = None


class RecommendedItem(_Response):
    """One recommended item."""

    item_id: str
    score: float
    channel: str = Field(description="recall channel the item came from (als, cf, hot, ...)")
    reasons: list[str] = Field(default_factory=list)
    metadata: ItemMeta | None = Field(default=None, description="null when the item function was unavailable")


class RecommendResponse(_Response):
    """The answer of `POST /recommend`; `degraded` lists every fallback that was taken."""

    user_id: str
    items: list[RecommendedItem]
    source: Literal["personalized", "hot", "hot_cache", "none"] = Field(
        description="personalized: recall (+ranking); hot: recall's hot list; hot_cache: last good hot list"
    )
    degraded: list[str] = Field(default_factory=list, description="e.g. ranking_timeout, recall_unavailable")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="per stage and total")
    model_versions: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------------- internal contracts


class UserRequest(_Request):
    """user `/`."""

    user_id: UserId


class UserProfile(_Response):
    """user `/` response."""

    user_id: str
    recent_items: list[str] = Field(default_factory=list, description="newest first")
    seen_items: list[str] = Field(default_factory=list)
    category_affinity: dict[str, float] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)
    is_new: bool = False


class RecallRequest(_Request):
    """recall `/`."""

    user_id: UserId
    n: int = Field(ge=1, le=MAX_CANDIDATES)
    recent_items: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE)
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE)


class RecallCandidate(_Response):
    """One recall candidate."""

    item_id: str
    score: float
    channel: str
    channel_scores: dict[str, float] = Field(default_factory=dict)
    demote: float | None = Field(
        default=None,
        description="a factor in (0, 1) the BFF applies to the item's score after ranking: a near "
        "neighbour of an item the user disliked or hid (zerorec.feedback)",
    )
    signals: str = Field(
        default="",
        description="base64 of little-endian float32 pairs, one per channel of the response's "
        "signal_channels: the channel's score for the item (its lowest score where it has none) and "
        "the item's rank in it (how many items score higher, history excluded); empty for items newer "
        "than the model. Ranking's channel features.",
    )


class RecallResponse(_Response):
    """recall `/` response."""

    candidates: list[RecallCandidate]
    signal_channels: list[str] = Field(default_factory=list, description="the channels of `signals`")
    model_version: str | None = None


class HotRequest(_Request):
    """recall `/hot`."""

    n: int = Field(ge=1, le=MAX_CANDIDATES)
    category: Id | None = None


class HotItem(_Response):
    """One hot-list entry."""

    item_id: str
    score: float
    channel: str = "hot"


class HotResponse(_Response):
    """recall `/hot` response."""

    items: list[HotItem]


class CandidateIn(TypedDict):
    """A RecallCandidate inside a ranking request: validated like one, kept as a plain dict
    (no model object per candidate: a request carries hundreds)."""

    __pydantic_config__ = ConfigDict(extra="ignore")  # type: ignore[misc]
    item_id: str
    score: float
    channel: str
    channel_scores: NotRequired[dict[str, float]]
    signals: NotRequired[Annotated[str, StringConstraints(max_length=4 * (8 * MAX_SIGNAL_CHANNELS // 3 + 1))]]


class RankingRequest(_Request):
    """ranking `/`: recall's candidates, and its `signal_channels` (without them, or for a candidate
    without `signals`, the ranker sees the channels as absent)."""

    user_id: UserId
    candidates: list[CandidateIn] = Field(max_length=MAX_CANDIDATES)
    signal_channels: list[Id] = Field(default_factory=list, max_length=MAX_SIGNAL_CHANNELS)
    context: dict[ContextKey, ContextValue] = Field(default_factory=dict, max_length=32)


class RankingResponse(_Response):
    """ranking `/` response: one score per candidate, same order."""

    scores: list[float]
    model_version: str | None = None


class RerankItem(TypedDict):
    """An item entering reranking (validated, kept as a plain dict: a request carries hundreds)."""

    __pydantic_config__ = ConfigDict(extra="ignore")  # type: ignore[misc]
    item_id: str
    score: float
    channel: str


class RerankRequest(_Request):
    """reranking `/`."""

    user_id: UserId
    items: list[RerankItem] = Field(max_length=MAX_CANDIDATES)
    n: int = Field(ge=1, le=100)
    seen: list[Id] = Field(default_factory=list, max_length=2 * MAX_EXCLUDE)


class RerankedItem(_Response):
    """An item leaving reranking."""

    item_id: str
    score: float
    channel: str
    reasons: list[str] = Field(default_factory=list)


class RerankResponse(_Response):
    """reranking `/` response."""

    items: list[RerankedItem]


class ItemRequest(_Request):
    """item `/`."""

    item_ids: list[Id] = Field(max_length=MAX_CANDIDATES)


class ItemResponse(_Response):
    """item `/` response: metadata keyed by item id (unknown ids are absent)."""

    items: dict[str, ItemMeta]


# --------------------------------------------------------------------------- helpers


def validation_reason(exc: ValidationError, limit: int = 5) -> str:
    """A short, human-readable reason for a 4xx / INVALID_ARGUMENT."""
    by_loc: dict[str, list[tuple[str | None, str]]] = {}
    for err in exc.errors(include_url=False):
        loc = list(err.get("loc", ()))
        tag = None
        # Union members add their type name to the location: fold them into one entry.
        if loc and isinstance(loc[-1], str) and loc[-1] in _UNION_TAGS:
            tag = loc.pop()
        key = ".".join(str(p) for p in loc) or "body"
        by_loc.setdefault(key, []).append((tag, err.get("msg", "invalid")))
    parts = []
    for key, errs in list(by_loc.items())[:limit]:
        tags = [t for t, _ in errs if t]
        if len(tags) > 1:
            parts.append(f"{key}: wrong type (expected {' | '.join(_UNION_TAGS[t] for t in tags)})")
        else:
            parts.append(f"{key}: {errs[0][1]}")
    if len(by_loc) > limit:
        parts.append(f"(+{len(by_loc) - limit} more)")
    return "; ".join(parts)


_UNION_TAGS = {
    "constrained-str": "string", "str": "string", "int": "integer", "float": "number", "bool": "boolean",
}


def is_json_error(exc: ValidationError) -> bool:
    """True when the body was not JSON at all (400 rather than 422)."""
    return any(e.get("type") == "json_invalid" for e in exc.errors())


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 document of the recommender's HTTP API, generated from the models above."""
    from pydantic.json_schema import models_json_schema

    models = [RecommendRequest, RecommendResponse, ErrorResponse, HealthResponse]
    _, defs = models_json_schema(
        [(m, "validation" if m is RecommendRequest else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    schemas = defs.get("$defs", {})

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def body(model: type[BaseModel], description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": ref(model)}}}

    error = body(ErrorResponse, "bad request")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ZeroRec recommender (BFF)",
            "version": "0.1.0",
            "description": "Recommendations that degrade instead of failing: see `degraded` and `source`.",
        },
        "paths": {
            "/recommend": {
                "post": {
                    "operationId": "recommend",
                    "summary": "Top-n items for a user",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref(RecommendRequest)}},
                    },
                    "responses": {
                        "200": body(RecommendResponse, "recommendations (possibly degraded)"),
                        "400": {**error, "description": "body is not JSON"},
                        "413": {**error, "description": f"body larger than {MAX_BODY_BYTES} bytes"},
                        "422": {**error, "description": "unknown field, wrong type or value out of range"},
                    },
                }
            },
            "/health": {
                "get": {"operationId": "health", "responses": {"200": body(HealthResponse, "ready")}}
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "responses": {"200": {"description": "this document"}},
                }
            },
        },
        "components": {"schemas": schemas},
    }


@cache
def openapi_json() -> str:
    """The OpenAPI document as stable, pretty JSON (what functions/recommender/openapi.json holds)."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    text = openapi_json()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
