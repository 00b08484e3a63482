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
from collections import deque
from collections.abc import Awaitable, Callable
from operator import itemgetter
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httptools
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
    RecallRequest,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    RerankResponse,
    UserProfile,
    UserRequest,
)
from zerorec.feedback import DEMOTE, GUEST_USER_ID, demoted_score
from zerorec.settings import Settings, get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
MIN_CALL_S = 0.005  # below this, a call is not worth starting
MAX_IDLE_PER_HOST = 64  # keep-alive connections kept per downstream


class StageError(Exception):
    """A downstream stage failed; `cause` goes into the `degraded` list."""

    def __init__(self, stage: str, cause: str) -> None:
        super().__init__(f"{stage}: {cause}")
        self.stage = stage
        self.cause = cause

    @property
    def reason(self) -> str:
        return f"{self.stage}_{self.cause}"


class BadResponse(ValueError):
    """A 200 whose body is not the stage's contract."""


# ---------------------------------------------------------------------------------- transport


class Transport(Protocol):
    """What the BFF needs from an HTTP client: POST bytes, get (status, body) back.

    Raises TimeoutError past `timeout` and ConnectionError (an OSError) when the peer is
    unreachable or breaks the connection."""

    async def post(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection: one request in flight, the response parsed by httptools."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.closed = False
        self.got_data = False  # any byte of the current response arrived
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_data = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionResetError("connection closed by the peer"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = bool(self.parser.should_keep_alive())
        waiter, body = self.waiter, b"".join(self.chunks)
        self.waiter, self.chunks = None, []
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))

    def _fail(self, exc: Exception) -> None:
        self.keep_alive = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send one request; the future resolves with (status, body)."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.got_data = False
        self.chunks = []
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HTTPPool:
    """A minimal async HTTP/1.1 client for the BFF's internal calls: keep-alive connection pools
    per downstream, requests written in one piece, responses parsed by httptools (C).

    Much cheaper per call than a general client (no per-request objects beyond the bytes). A
    request that fails on a reused idle connection before any response byte (the server closed it
    meanwhile) is retried once on a new connection: every internal call is a read."""

    def __init__(self, max_idle: int = MAX_IDLE_PER_HOST) -> None:
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._targets: dict[str, tuple[tuple[str, int], bytes]] = {}
        self._closed = False

    def _target(self, url: str) -> tuple[tuple[str, int], bytes]:
        got = self._targets.get(url)
        if got is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"only http:// URLs are supported: {url!r}")
            port = parts.port or 80
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            got = ((parts.hostname, port), head.encode("latin-1"))
            self._targets[url] = got
        return got

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, key[0], key[1])
        return conn

    async def post(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        """POST `body` (JSON) to `url`; (status, body) of the response."""
        async with asyncio.timeout(timeout):
            return await self._post(url, body)

    async def _post(self, url: str, body: bytes) -> tuple[int, bytes]:
        key, head = self._target(url)
        data = b"".join((head, b"Content-Length: %d\r\n\r\n" % len(body), body))
        idle = self._idle.setdefault(key, deque())
        while True:
            reused = bool(idle)
            conn = idle.pop() if reused else await self._connect(key)
            if conn.closed:
                continue
            try:
                status, payload = await conn.request(data)
            except ConnectionError:
                conn.close()
                if reused and not conn.got_data:
                    continue  # a stale keep-alive connection: retry on another one
                raise
            except BaseException:  # cancelled (deadline) mid-request: the connection is unusable
                conn.close()
                raise
            if conn.keep_alive and not conn.closed and not self._closed and len(idle) < self.max_idle:
                idle.append(conn)
            else:
                conn.close()
            return status, payload

    async def aclose(self) -> None:
        """Close every idle connection."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()


class HttpxTransport:
    """An injected `httpx.AsyncClient` (tests, the benchmark's in-process floor) as a Transport."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def post(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        import httpx

        try:
            async with asyncio.timeout(timeout):
                resp = await self.client.post(
                    url, content=body, timeout=timeout, headers={"content-type": "application/json"}
                )
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.HTTPError as exc:
            raise ConnectionError(repr(exc)) from None
        return resp.status_code, resp.content

    async def aclose(self) -> None:
        await self.client.aclose()


# ---------------------------------------------------------------------------------- contracts
# Internal responses come from our own functions: the big ones (recall's 500 candidates,
# ranking's 500 scores) are checked field by field on the parsed JSON instead of being built into
# pydantic objects; the small ones go through their pydantic models.


def _num(x: Any) -> bool:
    return type(x) is float or type(x) is int


def parse_recall(body: bytes) -> tuple[list[dict[str, Any]], str | None, list[str]]:
    """recall's (candidates, model_version, signal_channels); BadResponse unless it is
    RecallResponse's contract (candidates' `signals` go on to ranking unread)."""
    doc = _loads(body)
    cands = doc.get("candidates")
    version = doc.get("model_version")
    signal_channels = doc.get("signal_channels", [])
    if type(cands) is not list or not (version is None or type(version) is str):
        raise BadResponse("candidates must be a list")
    if type(signal_channels) is not list or not all(type(c) is str for c in signal_channels):
        raise BadResponse("signal_channels must be a list of channel names")
    for c in cands:
        if (
            type(c) is not dict
            or type(c.get("item_id")) is not str
            or not _num(c.get("score"))
            or type(c.get("channel")) is not str
            or type(c.get("channel_scores", {})) is not dict
        ):
            raise BadResponse(f"not a RecallCandidate: {str(c)[:200]}")
    return cands, version, signal_channels


def parse_ranking(body: bytes) -> tuple[list[float], str | None]:
    """ranking's (scores, model_version); BadResponse unless it is RankingResponse's contract."""
    doc = _loads(body)
    scores = doc.get("scores")
    version = doc.get("model_version")
    if type(scores) is not list or not all(map(_num, scores)):
        raise BadResponse("scores must be a list of numbers")
    if not (version is None or type(version) is str):
        raise BadResponse("model_version must be a string")
    return [float(s) for s in scores], version


def _loads(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadResponse(f"not JSON: {exc}") from None
    if type(doc) is not dict:
        raise BadResponse("not a JSON object")
    return doc


def pydantic_parser(model: type[BaseModel]) -> Callable[[bytes], Any]:
    """A parser that validates the body against a pydantic response model."""

    def parse(body: bytes) -> Any:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise BadResponse(str(exc)) from None

    return parse


_PARSE_USER = pydantic_parser(UserProfile)
_PARSE_HOT = pydantic_parser(HotResponse)
_PARSE_RERANK = pydantic_parser(RerankResponse)
_PARSE_ITEM = pydantic_parser(ItemResponse)


class Recommender:
    """Orchestrates one recommendation over the user, recall, ranking, reranking and item functions."""

    def __init__(
        self,
        settings: Settings | None = None,
        client: Any = None,
        hot_refresh_s: float = 60.0,
    ) -> None:
        """`client`: a Transport, or an httpx.AsyncClient (wrapped); default: our own HTTPPool."""
        self.settings = settings or get_settings()
        self._own_client = client is None
        if client is None:
            self.client: Transport = HTTPPool()
        elif hasattr(client, "build_request"):  # an httpx client
            self.client = HttpxTransport(client)
        else:
            self.client = client
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
        self, stage: str, url: str, body: BaseModel | dict[str, Any], parse: Callable[[bytes], T], end: float
    ) -> T:
        """POST body to url within min(deadline, what is left of the budget); parse the contract.

        A dict body is sent as is (the hot path builds 500-item lists without model instances);
        tests/bff checks every body the fakes receive against the request models.
        """
        timeout = min(self.deadline_s, end - time.perf_counter())
        if timeout < MIN_CALL_S:
            raise StageError(stage, "skipped")
        payload = body.model_dump_json().encode() if isinstance(body, BaseModel) else orjson.dumps(body)
        try:
            status, content = await self.client.post(url, payload, timeout)
        except TimeoutError:
            raise StageError(stage, "timeout") from None
        except OSError as exc:
            log.warning("%s unavailable: %r", stage, exc)
            raise StageError(stage, "unavailable") from None
        if status != 200:
            raise StageError(stage, f"http_{status}")
        try:
            return parse(content)
        except BadResponse as exc:
            log.warning("%s broke its contract: %s", stage, exc)
            raise StageError(stage, "bad_response") from None

    @staticmethod
    async def _timed(stage: str, timings: dict[str, float], coro: Awaitable[T]) -> T | StageError:
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
            hot = await self._call(
                "hot", self._url(self.settings.recall_url, "/hot"), HotRequest(n=n), _PARSE_HOT, end
            )
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
                hot = await self._call(
                    "hot", self._url(self.settings.recall_url, "/hot"), HotRequest(n=100), _PARSE_HOT, end
                )
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
        # A guest (no user_id): the session's recent items stand in for the profile (zerorec.feedback).
        user_id = req.user_id or GUEST_USER_ID

        # 1. user and recall, concurrently.
        if req.user_id is None:
            user_call: Awaitable[Any] = _guest_profile(req.recent_items)
        else:
            user_call = self._call(
                "user", self._url(s.user_url), UserRequest(user_id=user_id), _PARSE_USER, end
            )
        recall_n = max(s.recall_candidates, req.n)
        recall_call = self._call(
            "recall",
            self._url(s.recall_url),
            RecallRequest(user_id=user_id, n=recall_n, exclude=req.exclude, recent_items=req.recent_items),
            parse_recall,
            end,
        )
        user_res, recall_res = await asyncio.gather(
            self._timed("user", timings, user_call), self._timed("recall", timings, recall_call)
        )
        if isinstance(user_res, StageError):
            if user_res.cause != "http_404":  # 404: unknown user = new user, not a degradation
                degraded.append(user_res.reason)
            profile = UserProfile(user_id=user_id, is_new=True)
        else:
            profile = user_res
        # What reranking must not show: the caller's exclusions, then what the user has seen.
        seen = list(dict.fromkeys([*req.exclude, *profile.seen_items]))[: 2 * MAX_EXCLUDE]
        blocked = excluded | set(profile.seen_items)

        # 2. candidates: recall, or the hot list.
        candidates: list[dict[str, Any]]
        signal_channels: list[str] = []
        if not isinstance(recall_res, StageError):
            source = "personalized"
            recalled, recall_version, signal_channels = recall_res
            if recall_version:
                versions["recall"] = recall_version
            candidates = [c for c in recalled if c["item_id"] not in excluded][:MAX_CANDIDATES]
        else:
            degraded.append(recall_res.reason)
            t = time.perf_counter()
            hot, source = await self._hot(min(req.n + len(blocked), MAX_CANDIDATES), end, degraded)
            timings["hot"] = round((time.perf_counter() - t) * 1000, 3)
            candidates = [
                {"item_id": h.item_id, "score": h.score, "channel": h.channel or "hot"}
                for h in hot
                if h.item_id not in blocked
            ]

        # 3. ranking (personalized candidates only), then 4. reranking.
        final: list[RecommendedItem]
        if source == "personalized" and candidates:
            # recall's candidate objects (and their signals) go on as received.
            rank_res = await self._timed(
                "ranking",
                timings,
                self._call(
                    "ranking",
                    self._url(s.ranking_url),
                    {
                        "user_id": user_id,
                        "candidates": candidates,
                        "signal_channels": signal_channels,
                        "context": req.context,
                    },
                    parse_ranking,
                    end,
                ),
            )
            if not isinstance(rank_res, StageError) and len(rank_res[0]) != len(candidates):
                rank_res = StageError("ranking", "bad_response")
            if isinstance(rank_res, StageError):
                degraded.append(rank_res.reason)
                ranked = _ranked(candidates)  # recall order
            else:
                scores, rank_version = rank_res
                if rank_version:
                    versions["ranking"] = rank_version
                ranked = _ranked(candidates, scores)
                ranked.sort(key=itemgetter("score"), reverse=True)
            rerank_res = await self._timed(
                "reranking",
                timings,
                self._call(
                    "reranking",
                    self._url(s.reranking_url),
                    {"user_id": user_id, "items": ranked, "n": req.n, "seen": seen},
                    _PARSE_RERANK,
                    end,
                ),
            )
            if isinstance(rerank_res, StageError):
                degraded.append(rerank_res.reason)
                final = self._top(ranked, blocked, req.n)
            else:
                final = [
                    RecommendedItem(item_id=r.item_id, score=r.score, channel=r.channel, reasons=r.reasons)
                    for r in rerank_res.items
                    if r.item_id not in excluded
                ][: req.n]
        else:
            final = self._top(_ranked(candidates), blocked, req.n)
        final = _dedupe(final)

        # 5. item metadata.
        if final:
            item_res = await self._timed(
                "item",
                timings,
                self._call(
                    "item",
                    self._url(s.item_url),
                    ItemRequest(item_ids=[f.item_id for f in final]),
                    _PARSE_ITEM,
                    end,
                ),
            )
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
            user_id=user_id,
            items=final,
            source=source,
            degraded=degraded,
            timings_ms=timings,
            model_versions=versions,
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


async def _guest_profile(recent_items: list[str]) -> UserProfile:
    """A guest's profile: the session's items, which are also not to be shown again."""
    return UserProfile(user_id=GUEST_USER_ID, recent_items=recent_items, seen_items=recent_items, is_new=True)


def _ranked(candidates: list[dict[str, Any]], scores: list[float] | None = None) -> list[dict[str, Any]]:
    """The candidates as reranking's items (item_id, score, channel); `scores` replace recall's."""
    if scores is None:
        scores = [c["score"] for c in candidates]
    # recall's DEMOTE (zerorec.feedback): neighbours of the user's dislikes go down after ranking too
    return [
        {"item_id": c["item_id"], "score": demoted_score(score, c.get(DEMOTE)), "channel": c["channel"]}
        for c, score in zip(candidates, scores, strict=True)
    ]


def _dedupe(items: list[RecommendedItem]) -> list[RecommendedItem]:
    seen: set[str] = set()
    out = []
    for it in items:
        if it.item_id not in seen:
            seen.add(it.item_id)
            out.append(it)
    return out
