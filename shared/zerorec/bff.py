"""The recommender BFF's orchestration: user + recall, then ranking, reranking and item hydration.

Every downstream call has a deadline (`deadline_ms`, cut to what is left of `total_budget_ms`), and
every failure degrades the answer instead of failing it:

| stage fails | what happens | reason in `degraded` |
|---|---|---|
| user | treated as a new user (no history) | `user_<cause>` |
| recall | recall's `/hot` list, else the last good hot list, else `[]` | `recall_<cause>`, `hot_<cause>` |
| ranking | recall order | `ranking_<cause>` |
| reranking | top-n of the ranked list, excluded/seen items removed | `reranking_<cause>` |
| item | items without metadata | `item_<cause>` |

`<cause>` is one of `timeout`, `unavailable` (connection refused/reset), `http_<status>`,
`bad_response` (not the contract) or `skipped` (no budget left). Transport-agnostic: the HTTP and
gRPC handlers both call `Recommender.recommend`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from zerorec.api import (
    MAX_CANDIDATES,
    MAX_EXCLUDE,
    HealthResponse,
    HotItem,
    HotRequest,
    HotResponse,
    ItemMeta,
    ItemRequest,
    ItemResponse,
    RankingRequest,
    RankingResponse,
    RecallCandidate,
    RecallRequest,
    RecallResponse,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    RerankResponse,
    UserProfile,
    UserRequest,
)
from zerorec.settings import Settings, get_settings

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
MIN_CALL_S = 0.005  # below this, a call is not worth starting


class StageError(Exception):
    """A downstream stage failed; `cause` goes into the `degraded` list."""

    def __init__(self, stage: str, cause: str) -> None:
        super().__init__(f"{stage}: {cause}")
        self.stage = stage
        self.cause = cause

    @property
    def reason(self) -> str:
        return f"{self.stage}_{self.cause}"


class Recommender:
    """Orchestrates one recommendation over the user, recall, ranking, reranking and item functions."""

    def __init__(
        self,
        settings: Settings | None = None,
        client: httpx.AsyncClient | None = None,
        hot_refresh_s: float = 60.0,
    ) -> None:
        self.settings = settings or get_settings()
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            headers={"content-type": "application/json"},
        )
        self.deadline_s = self.settings.deadline_ms / 1000
        self.budget_s = self.settings.total_budget_ms / 1000
        self.hot_refresh_s = hot_refresh_s
        self._hot_cache: list[HotItem] = []
        self._hot_cached_at = float("-inf")
        self._background: set[asyncio.Task[Any]] = set()

    async def aclose(self) -> None:
        """Cancel background refreshes and close the HTTP client (if it is ours)."""
        for task in list(self._background):
            task.cancel()
        if self._own_client:
            await self.client.aclose()

    def health(self) -> HealthResponse:
        """The BFF holds no model: it is ready once its process is."""
        return HealthResponse(status="ok", model_version=None)

    # ------------------------------------------------------------------ transport

    async def _call(
        self, stage: str, url: str, body: BaseModel | dict[str, Any], out: type[M], end: float
    ) -> M:
        """POST body to url within min(deadline, what is left of the budget); parse the contract.

        A dict body is sent as is (the hot path builds 500-item lists without model instances);
        tests/bff checks every body the fakes receive against the request models.
        """
        timeout = min(self.deadline_s, end - time.perf_counter())
        if timeout < MIN_CALL_S:
            raise StageError(stage, "skipped")
        try:
            async with asyncio.timeout(timeout):
                payload = body.model_dump_json() if isinstance(body, BaseModel) else orjson.dumps(body)
                resp = await self.client.post(url, content=payload, timeout=timeout)
        except (TimeoutError, httpx.TimeoutException):
            raise StageError(stage, "timeout") from None
        except httpx.HTTPError as exc:
            log.warning("%s unavailable: %r", stage, exc)
            raise StageError(stage, "unavailable") from None
        if resp.status_code != 200:
            raise StageError(stage, f"http_{resp.status_code}")
        try:
            return out.model_validate_json(resp.content)
        except ValidationError as exc:
            log.warning("%s broke its contract: %s", stage, exc)
            raise StageError(stage, "bad_response") from None

    @staticmethod
    async def _timed(
        stage: str, timings: dict[str, float], coro: Awaitable[M]
    ) -> M | StageError:
        t = time.perf_counter()
        try:
            return await coro
        except StageError as exc:
            return exc
        finally:
            timings[stage] = round((time.perf_counter() - t) * 1000, 3)

    # ------------------------------------------------------------------ stages

    def _url(self, base: str, path: str = "/") -> str:
        return base.rstrip("/") + path

    async def _hot(self, n: int, end: float, degraded: list[str]) -> tuple[list[HotItem], str]:
        """recall's /hot, else the last good hot list, else []."""
        try:
            hot = await self._call("hot", self._url(self.settings.recall_url, "/hot"),
                                   HotRequest(n=n), HotResponse, end)
        except StageError as exc:
            degraded.append(exc.reason)
            if self._hot_cache:
                return self._hot_cache, "hot_cache"
            degraded.append("hot_empty")
            return [], "none"
        self._remember_hot(hot.items)
        return hot.items, "hot"

    def _remember_hot(self, items: list[HotItem]) -> None:
        if items:
            self._hot_cache = list(items)
            self._hot_cached_at = time.monotonic()

    def _maybe_refresh_hot(self) -> None:
        """Keep a last-resort hot list warm in the background (at most once per hot_refresh_s)."""
        if self.hot_refresh_s <= 0 or time.monotonic() - self._hot_cached_at < self.hot_refresh_s:
            return
        if self._background:
            return
        self._hot_cached_at = time.monotonic()  # don't stampede while the refresh runs

        async def refresh() -> None:
            end = time.perf_counter() + self.deadline_s
            try:
                hot = await self._call("hot", self._url(self.settings.recall_url, "/hot"),
                                       HotRequest(n=100), HotResponse, end)
                self._remember_hot(hot.items)
            except StageError as exc:
                log.info("hot list refresh failed: %s", exc)

        task = asyncio.create_task(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ the pipeline

    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        """One recommendation; never raises for a downstream failure."""
        start = time.perf_counter()
        end = start + self.budget_s
        s = self.settings
        degraded: list[str] = []
        timings: dict[str, float] = {}
        versions: dict[str, str] = {}
        excluded = set(req.exclude)

        # 1. user and recall, concurrently.
        user_call = self._call(
            "user", self._url(s.user_url), UserRequest(user_id=req.user_id), UserProfile, end
        )
        recall_n = max(s.recall_candidates, req.n)
        recall_call = self._call(
            "recall", self._url(s.recall_url),
            RecallRequest(user_id=req.user_id, n=recall_n, exclude=req.exclude),
            RecallResponse, end,
        )
        user_res, recall_res = await asyncio.gather(
            self._timed("user", timings, user_call), self._timed("recall", timings, recall_call)
        )
        if isinstance(user_res, StageError):
            if user_res.cause != "http_404":  # 404: unknown user = new user, not a degradation
                degraded.append(user_res.reason)
            profile = UserProfile(user_id=req.user_id, is_new=True)
        else:
            profile = user_res
        # What reranking must not show: the caller's exclusions, then what the user has seen.
        seen = list(dict.fromkeys([*req.exclude, *profile.seen_items]))[: 2 * MAX_EXCLUDE]
        blocked = excluded | set(profile.seen_items)

        # 2. candidates: recall, or the hot list.
        if isinstance(recall_res, RecallResponse):
            source = "personalized"
            if recall_res.model_version:
                versions["recall"] = recall_res.model_version
            candidates = [c for c in recall_res.candidates if c.item_id not in excluded][:MAX_CANDIDATES]
        else:
            degraded.append(recall_res.reason)
            t = time.perf_counter()
            hot, source = await self._hot(min(req.n + len(blocked), MAX_CANDIDATES), end, degraded)
            timings["hot"] = round((time.perf_counter() - t) * 1000, 3)
            candidates = [
                RecallCandidate(item_id=h.item_id, score=h.score, channel=h.channel or "hot")
                for h in hot if h.item_id not in blocked
            ]

        # 3. ranking (personalized candidates only), then 4. reranking.
        ranked = [{"item_id": c.item_id, "score": c.score, "channel": c.channel} for c in candidates]
        final: list[RecommendedItem]
        if source == "personalized" and candidates:
            rank_res = await self._timed("ranking", timings, self._call(
                "ranking", self._url(s.ranking_url),
                RankingRequest(user_id=req.user_id, candidates=candidates, context=req.context),
                RankingResponse, end,
            ))
            if isinstance(rank_res, RankingResponse) and len(rank_res.scores) != len(candidates):
                rank_res = StageError("ranking", "bad_response")
            if isinstance(rank_res, StageError):
                degraded.append(rank_res.reason)  # keep recall order
            else:
                if rank_res.model_version:
                    versions["ranking"] = rank_res.model_version
                for r, score in zip(ranked, rank_res.scores, strict=True):
                    r["score"] = score
                ranked.sort(key=lambda r: r["score"], reverse=True)
            rerank_res = await self._timed("reranking", timings, self._call(
                "reranking", self._url(s.reranking_url),
                {"user_id": req.user_id, "items": ranked, "n": req.n, "seen": seen},
                RerankResponse, end,
            ))
            if isinstance(rerank_res, StageError):
                degraded.append(rerank_res.reason)
                final = self._top(ranked, blocked, req.n)
            else:
                final = [
                    RecommendedItem(item_id=r.item_id, score=r.score, channel=r.channel, reasons=r.reasons)
                    for r in rerank_res.items if r.item_id not in excluded
                ][: req.n]
        else:
            final = self._top(ranked, blocked, req.n)
        final = _dedupe(final)

        # 5. item metadata.
        if final:
            item_res = await self._timed("item", timings, self._call(
                "item", self._url(s.item_url), ItemRequest(item_ids=[f.item_id for f in final]),
                ItemResponse, end,
            ))
            if isinstance(item_res, StageError):
                degraded.append(item_res.reason)
            else:
                for f in final:
                    meta = item_res.items.get(f.item_id)
                    f.metadata = meta if isinstance(meta, ItemMeta) else None

        if source == "personalized":
            self._maybe_refresh_hot()
        timings["total"] = round((time.perf_counter() - start) * 1000, 3)
        return RecommendResponse(
            user_id=req.user_id, items=final, source=source, degraded=degraded,
            timings_ms=timings, model_versions=versions,
        )

    @staticmethod
    def _top(items: list[dict[str, Any]], blocked: set[str], n: int) -> list[RecommendedItem]:
        out = []
        for r in items:
            if r["item_id"] in blocked:
                continue
            out.append(RecommendedItem(**r))
            if len(out) == n:
                break
        return out


def _dedupe(items: list[RecommendedItem]) -> list[RecommendedItem]:
    seen: set[str] = set()
    out = []
    for it in items:
        if it.item_id not in seen:
            seen.add(it.item_id)
            out.append(it)
    return out

