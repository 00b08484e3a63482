"""The BFF's public share of the platform API (`zerorec.platform_api`): `/similar-items`,
`/similar-users`, `/latest`, `/popular`. Each is one call to the function that holds the data
(recall or user), plus item metadata from the item function, over the Recommender's own HTTP client
and deadlines. A stage that fails answers 503 (404 passes through): unlike `/recommend`, these
have no fallback worth giving."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from zerorec.api import HotRequest, HotResponse, ItemMeta, ItemRequest, ItemResponse
from zerorec.bff import Recommender, StageError, pydantic_parser
from zerorec.platform_api import (
    CategoryListRequest,
    CategoryListResponse,
    ScoredItem,
    SimilarItemsRequest,
    SimilarItemsResponse,
    SimilarUsersRequest,
    SimilarUsersResponse,
)


class StageFailed(Exception):
    """A downstream call failed: `status` is what the BFF answers (404 passes through, else 503)."""

    def __init__(self, error: StageError) -> None:
        super().__init__(error.reason)
        self.status = 404 if error.cause == "http_404" else 503
        self.reason = f"{error.stage} {'does not know it' if self.status == 404 else error.cause}"


async def _call(
    rec: Recommender, stage: str, base: str, path: str, body: BaseModel, model: type[BaseModel]
) -> Any:
    end = time.perf_counter() + rec.budget_s
    try:
        return await rec._call(stage, rec._url(base, path), body, pydantic_parser(model), end)
    except StageError as exc:
        raise StageFailed(exc) from None


async def _with_metadata(rec: Recommender, items: list[ScoredItem]) -> list[ScoredItem]:
    """Items with their metadata (left null when the item function fails: still a useful answer)."""
    if not items:
        return items
    try:
        found = await _call(
            rec,
            "item",
            rec.settings.item_url,
            "/",
            ItemRequest(item_ids=[i.item_id for i in items]),
            ItemResponse,
        )
    except StageFailed:
        return items
    for it in items:
        meta = found.items.get(it.item_id)
        it.metadata = meta if isinstance(meta, ItemMeta) else None
    return items


async def similar_items(rec: Recommender, req: SimilarItemsRequest) -> SimilarItemsResponse:
    got = await _call(rec, "recall", rec.settings.recall_url, "/similar-items", req, SimilarItemsResponse)
    got.items = await _with_metadata(rec, got.items)
    return got


async def similar_users(rec: Recommender, req: SimilarUsersRequest) -> SimilarUsersResponse:
    return await _call(rec, "user", rec.settings.user_url, "/similar-users", req, SimilarUsersResponse)


async def latest(rec: Recommender, req: CategoryListRequest) -> CategoryListResponse:
    got = await _call(rec, "recall", rec.settings.recall_url, "/latest", req, CategoryListResponse)
    got.items = await _with_metadata(rec, got.items)
    return got


async def popular(rec: Recommender, req: CategoryListRequest) -> CategoryListResponse:
    hot = await _call(
        rec,
        "recall",
        rec.settings.recall_url,
        "/hot",
        HotRequest(n=req.n, category=req.category),
        HotResponse,
    )
    items = [ScoredItem(item_id=h.item_id, score=h.score) for h in hot.items]
    return CategoryListResponse(category=req.category, items=await _with_metadata(rec, items))


ROUTES = {
    "/similar-items": (SimilarItemsRequest, similar_items),
    "/similar-users": (SimilarUsersRequest, similar_users),
    "/latest": (CategoryListRequest, latest),
    "/popular": (CategoryListRequest, popular),
}
