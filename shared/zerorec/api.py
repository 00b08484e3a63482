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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

MAX_BODY_BYTES = 64 * 1024
# ranking and reranking take candidate batches (up to MAX_CANDIDATES items with their signals:
# 500 are ~50 KB): their bodies may be larger than a public request's.
MAX_BATCH_BODY_BYTES = 1024 * 1024
# What the BFF reads of an internal function's answer at most (recall's largest batch is ~0.6 MB).
MAX_INTERNAL_RESPONSE_BYTES = 2 * MAX_BATCH_BODY_BYTES
MAX_EXCLUDE = 1000
MAX_GUEST_ITEMS = 50  # a guest session's recent items (realtime.RECENT_MAX)
MAX_CANDIDATES = 2000
MAX_SIGNAL_CHANNELS = 16

Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\w.:@\-]+$")]
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ContextValue = Annotated[str, StringConstraints(max_length=256)] | int | float | bool


# The request context the ranker reads (`RankingContext`); any other key passes through unread.
CONTEXT_DEVICES = ("web", "ios", "android", "tv", "other")
CONTEXT_SURFACES = ("home", "item", "search", "cart", "email", "other")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


class RankingContext(BaseModel):
    """The keys of a request's `context` that the ranker reads (zerorec.ranking.features): a
    missing or out-of-schema value is "unknown" to the ranker (hour and weekday then come from the
    server's UTC clock), never an error; other keys are allowed and ignored."""

    model_config = ConfigDict(extra="allow", defer_build=True)
    hour: int | None = Field(default=None, ge=0, le=23, description="hour of day of the request, 0-23")
    weekday: int | None = Field(default=None, ge=0, le=6, description="day of the week, Monday = 0")
    device: Literal[CONTEXT_DEVICES] | None = Field(default=None, description="the client's device")  # type: ignore[valid-type]
    surface: Literal[CONTEXT_SURFACES] | None = Field(  # type: ignore[valid-type]
        default=None, description="where the list is shown"
    )


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
        default_factory=dict,
        max_length=32,
        description="request context; the ranker reads hour, weekday, device, surface (RankingContext)",
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
    position: int = Field(default=0, description="1-based place in the answer (impressions, clicks)")


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
    recommendation_id: str = Field(
        default="", description="send it with impression and click events (POST /events) to count the CTR"
    )
    variant: str = Field(default="", description="the experiment variant that served the answer")


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


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
ChannelCode = Annotated[int, Field(ge=0, lt=MAX_SIGNAL_CHANNELS)]
FoundMask = Annotated[int, Field(ge=0, lt=2**MAX_SIGNAL_CHANNELS)]
DemoteFactor = Annotated[float, Field(gt=0, le=1)]
# base64 of float32 [MAX_CANDIDATES, MAX_SIGNAL_CHANNELS, 2]
MAX_SIGNALS_CHARS = 4 * -(-(MAX_CANDIDATES * MAX_SIGNAL_CHANNELS * 8) // 3)


class CandidateColumns(BaseModel):
    """A candidate batch as parallel arrays, one entry per candidate (docs/HOPS.md): the internal
    hop contract of recall -> ranking -> reranking. Validated as arrays (types, ranges, equal
    lengths); no object per candidate. `zerorec.columnar.CandidateBatch` is its numpy form."""

    model_config = ConfigDict(extra="ignore", strict=True, defer_build=True)
    item_ids: list[Id] = Field(max_length=MAX_CANDIDATES, description="candidate ids, best first")
    scores: list[FiniteFloat] = Field(
        max_length=MAX_CANDIDATES,
        description="one per item: recall's merge order (1 = first) or a ranker score",
    )
    channel: list[ChannelCode] = Field(
        max_length=MAX_CANDIDATES,
        description="one per item: index into `channels` of the channel that found it",
    )
    channels: list[Id] = Field(
        min_length=1,
        max_length=MAX_SIGNAL_CHANNELS,
        description="channel names (distinct): the codes' vocabulary",
    )
    found: list[FoundMask] = Field(
        default_factory=list,
        max_length=MAX_CANDIDATES,
        description="empty, or one per item: bit k set when channel k of `channels` returned the item",
    )
    demote: list[DemoteFactor] = Field(
        default_factory=list,
        max_length=MAX_CANDIDATES,
        description="empty, or one per item: a factor in (0, 1] the BFF applies to the item's score "
        "after ranking (1: none; below 1: a near neighbour of an item the user disliked or hid, "
        "zerorec.feedback)",
    )
    signals: str = Field(
        default="",
        max_length=MAX_SIGNALS_CHARS,
        description="empty, or base64 of little-endian float32 [items, channels, 2]: for each item and "
        "channel of `channels`, the channel's score for the item and the item's rank in the channel's "
        "list (NaN: none). Ranking's channel features; valid only for `model_version`'s model.",
    )
    model_version: str | None = Field(default=None, max_length=128, description="the model of `signals`")

    @model_validator(mode="after")
    def _shapes(self) -> CandidateColumns:
        m = len(self.item_ids)
        optional = (self.found, self.demote)
        if len(self.scores) != m or len(self.channel) != m or any(x and len(x) != m for x in optional):
            raise ValueError(
                f"item_ids, scores, channel (and found, demote, when given) must have one entry per "
                f"item: {m}, {len(self.scores)}, {len(self.channel)}, {len(self.found)}, {len(self.demote)}"
            )
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels must be distinct")
        c = len(self.channels)
        if m and max(self.channel) >= c:
            raise ValueError(f"channel codes must be below len(channels) = {c}")
        if self.found and max(self.found) >= 1 << c:
            raise ValueError(f"found masks must have bits for the {c} channels only")
        if self.signals and len(self.signals) != 4 * -(-(m * c * 8) // 3):
            raise ValueError(f"signals must be base64 of float32 [{m} items, {c} channels, 2]")
        return self


class RecallResponse(CandidateColumns):
    """recall `/` response: the candidate batch, best first (`model_version`: the serving model)."""


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


class RankingRequest(_Request):
    """ranking `/`: recall's batch (its `signals` are used only when its `model_version` is the
    ranker's own: otherwise 409, the caller keeps recall's order)."""

    user_id: UserId
    candidates: CandidateColumns
    context: dict[ContextKey, ContextValue] = Field(default_factory=dict, max_length=32)


class RankingResponse(_Response):
    """ranking `/` response: one score per candidate, same order."""

    scores: list[float]
    model_version: str | None = None


class RerankRequest(_Request):
    """reranking `/`: ranked candidates (`item_ids`, `scores`, `channel`, `channels` of the batch;
    `found` and `signals` are not used)."""

    user_id: UserId
    candidates: CandidateColumns
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


class PipelineRequest(_Request):
    """pipeline `/` (the compact topology: recall, ranking and reranking in one function)."""

    user_id: UserId
    n: int = Field(ge=1, le=100, description="how many items to return")
    candidates: int = Field(default=500, ge=1, le=MAX_CANDIDATES, description="how many recall gathers")
    recent_items: list[Id] = Field(
        default_factory=list, max_length=MAX_GUEST_ITEMS, description="a guest's session items, newest first"
    )
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE)
    context: dict[ContextKey, ContextValue] = Field(default_factory=dict, max_length=32)


class PipelineResponse(_Response):
    """pipeline `/` response: reranked items (never excluded, seen or in the trained history)."""

    items: list[RerankedItem]
    model_version: str | None = None


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


# A function route: (operationId, summary, request model, response model, statuses it may answer).
FunctionRoute = tuple[str, str, type[BaseModel], type[BaseModel], dict[int, str]]
INTERNAL_ERRORS = {
    400: "body is not JSON",
    404: "no such route",
    405: "wrong method",
    413: "body too large",
    422: "unknown field, wrong type, value out of range, or arrays that do not fit together",
    503: "no model loaded yet",
}


def function_openapi(title: str, description: str, routes: dict[str, FunctionRoute]) -> dict[str, Any]:
    """OpenAPI 3.1 document of an internal serving function (recall, ranking, reranking): its
    POST routes from their models, plus `/health` and this document."""
    from pydantic.json_schema import models_json_schema

    models = [(r[2], "validation") for r in routes.values()]
    models += [(r[3], "serialization") for r in routes.values()]
    models += [(ErrorResponse, "serialization"), (HealthResponse, "serialization")]
    _, defs = models_json_schema(list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}")

    def body(model: type[BaseModel], description: str) -> dict[str, Any]:
        ref = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"description": description, "content": {"application/json": {"schema": ref}}}

    paths: dict[str, Any] = {}
    for path, (op, summary, req, resp, statuses) in routes.items():
        responses = {"200": body(resp, "the answer")}
        responses.update({str(k): body(ErrorResponse, v) for k, v in {**INTERNAL_ERRORS, **statuses}.items()})
        paths[path] = {
            "post": {
                "operationId": op,
                "summary": summary,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": f"#/components/schemas/{req.__name__}"
                }}}},
                "responses": responses,
            }
        }
    paths["/health"] = {
        "get": {
            "operationId": "health",
            "responses": {"200": body(HealthResponse, "ready"), "503": body(HealthResponse, "loading")},
        }
    }
    paths["/openapi.json"] = {
        "get": {"operationId": "openapi", "responses": {"200": {"description": "this document"}}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "0.1.0", "description": description},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }


@cache
def openapi_json() -> str:
    """The OpenAPI document as stable, pretty JSON (what functions/recommender/openapi.json holds)."""
    from zerorec.platform_api import merge_openapi  # similar items / users, latest, popular

    return json.dumps(merge_openapi(openapi_document(), "recommender"), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    text = openapi_json()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
