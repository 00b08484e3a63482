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
`bad_response` (not the contract), `too_large` (a response past MAX_INTERNAL_RESPONSE_BYTES) or
`skipped` (no budget left). Ranking answers 409 (`ranking_http_409`) when recall's signals come
from another model version (a rollout): the answer keeps recall's order.

Candidates travel between the stages as one columnar batch (`zerorec.columnar`, docs/HOPS.md):
recall's body goes on to ranking as received, and no step builds an object per candidate.
Transport-agnostic: the HTTP and gRPC handlers both call `Recommender.recommend`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol, TypeVar
from urllib.parse import urlsplit

import httptools
import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from zerorec.api import (
    MAX_CANDIDATES,
    MAX_EXCLUDE,
    MAX_INTERNAL_RESPONSE_BYTES,
    HealthResponse,
    HotItem,
    HotRequest,
    HotResponse,
    ItemMeta,
    ItemRequest,
    ItemResponse,
    PipelineRequest,
    PipelineResponse,
    RankingResponse,
    RecallRequest,
    RecallResponse,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    RerankResponse,
    UserProfile,
    UserRequest,
    validation_reason,
)
from zerorec.columnar import CandidateBatch, demoted, member_of
from zerorec.ctr import Served, ServedLog, new_recommendation_id
from zerorec.experiments import Assigner, Variant
from zerorec.feedback import GUEST_USER_ID
from zerorec.observability import outgoing_traceparent, record_recommendation, traceparent_header_line
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


class ResponseTooLarge(ConnectionError):
    """A downstream answered more than the transport's `max_response` bytes (not read further)."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection: one request in flight, the response parsed by httptools;
    a body past `max_response` bytes fails the request (ResponseTooLarge) and closes the connection."""

    def __init__(self, max_response: int = MAX_INTERNAL_RESPONSE_BYTES) -> None:
        self.max_response = max_response
        self.size = 0
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
        if self.closed:  # failed (too large) mid-response: the rest is not read
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionResetError("connection closed by the peer"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length" and value.strip().isdigit() and int(value) > self.max_response:
            self._too_large()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_response:
            self._too_large()
            return
        self.chunks.append(body)

    def _too_large(self) -> None:
        self.chunks = []
        self._fail(ResponseTooLarge(f"response larger than {self.max_response} bytes"))

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
        self.size = 0
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
    meanwhile) is retried once on a new connection: every internal call is a read. A response
    body past `max_response` bytes fails the call (ResponseTooLarge) without being read."""

    def __init__(
        self, max_idle: int = MAX_IDLE_PER_HOST, max_response: int = MAX_INTERNAL_RESPONSE_BYTES
    ) -> None:
        self.max_idle = max_idle
        self.max_response = max_response
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
        _, conn = await loop.create_connection(lambda: _Connection(self.max_response), key[0], key[1])
        return conn

    async def post(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        """POST `body` (JSON) to `url`; (status, body) of the response."""
        async with asyncio.timeout(timeout):
            return await self._post(url, body)

    async def _post(self, url: str, body: bytes) -> tuple[int, bytes]:
        key, head = self._target(url)
        # traceparent: the request's trace goes on to every downstream function (zerorec.observability)
        data = b"".join((head, traceparent_header_line(), b"Content-Length: %d\r\n\r\n" % len(body), body))
        idle = self._idle.setdefault(key, deque())
        while True:
            reused = bool(idle)
            conn = idle.pop() if reused else await self._connect(key)
            if conn.closed:
                continue
            try:
                status, payload = await conn.request(data)
            except ResponseTooLarge:
                conn.close()
                raise
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
    """An injected `httpx.AsyncClient` (tests, the benchmark's in-process floor) as a Transport,
    with the same response cap as HTTPPool (the body is streamed and dropped past it)."""

    def __init__(self, client: Any, max_response: int = MAX_INTERNAL_RESPONSE_BYTES) -> None:
        self.client = client
        self.max_response = max_response

    async def post(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        import httpx

        try:
            async with asyncio.timeout(timeout):
                headers = {"content-type": "application/json"}
                if (traceparent := outgoing_traceparent()) is not None:
                    headers["traceparent"] = traceparent
                req = self.client.build_request("POST", url, content=body, timeout=timeout, headers=headers)
                resp = await self.client.send(req, stream=True)
                try:
                    content = await self._read(resp)
                finally:
                    await resp.aclose()
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.HTTPError as exc:
            raise ConnectionError(repr(exc)) from None
        return resp.status_code, content

    async def _read(self, resp: Any) -> bytes:
        import httpx

        chunks, size = [], 0
        try:
            async for chunk in resp.aiter_raw():
                size += len(chunk)
                if size > self.max_response:
                    break
                chunks.append(chunk)
        except httpx.StreamConsumed:  # a response built in memory (httpx.MockTransport)
            chunks, size = [resp.content], len(resp.content)
        if size > self.max_response:
            raise ResponseTooLarge(f"response larger than {self.max_response} bytes")
        return b"".join(chunks)

    async def aclose(self) -> None:
        await self.client.aclose()


# ---------------------------------------------------------------------------------- contracts
# Internal responses come from our own functions: the big ones (recall's 500 candidates,
# ranking's 500 scores) are checked field by field on the parsed JSON instead of being built into
# pydantic objects; the small ones go through their pydantic models.


class Recalled(NamedTuple):
    """recall's answer: its batch (signals left encoded: ranking reads them) and the body as received."""

    batch: CandidateBatch
    body: bytes


def parse_recall(body: bytes) -> Recalled:
    """recall's batch; BadResponse unless it is RecallResponse's contract (CandidateColumns)."""
    try:
        cols = RecallResponse.model_validate_json(body)
    except ValidationError as exc:
        raise BadResponse(validation_reason(exc)) from None
    return Recalled(CandidateBatch.from_columns(cols, decode_signals=False), body)


def parse_ranking(body: bytes) -> tuple[np.ndarray, str | None]:
    """ranking's (scores, model_version); BadResponse unless it is RankingResponse's contract."""
    try:
        resp = RankingResponse.model_validate_json(body)
    except ValidationError as exc:
        raise BadResponse(validation_reason(exc)) from None
    return np.asarray(resp.scores, dtype=np.float64), resp.model_version


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
_PARSE_PIPELINE = pydantic_parser(PipelineResponse)


class Recommender:
    """Orchestrates one recommendation over the user, recall, ranking, reranking and item functions."""

    def __init__(
        self,
        settings: Settings | None = None,
        client: Any = None,
        hot_refresh_s: float = 60.0,
        served_log: ServedLog | None = None,
    ) -> None:
        """`client`: a Transport, or an httpx.AsyncClient (wrapped); default: our own HTTPPool.
        `served_log`: where answers are recorded for CTR attribution; default: the configured KV."""
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
        self.assigner = Assigner.from_settings(self.settings)
        self.served_log = served_log or ServedLog(self.settings)
        self._arm_settings: dict[str, Settings] = {}

    def _settings_for(self, arm: Variant | None) -> Settings:
        """The settings of an experiment arm (its URL / candidate overrides), built once per arm."""
        if arm is None or not arm.url_overrides():
            return self.settings
        if arm.name not in self._arm_settings:
            self._arm_settings[arm.name] = self.settings.model_copy(update=arm.url_overrides())
        return self._arm_settings[arm.name]

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
        self,
        stage: str,
        url: str,
        body: BaseModel | dict[str, Any] | bytes,
        parse: Callable[[bytes], T],
        end: float,
        deadlines: int = 1,
    ) -> T:
        """POST body to url within min(`deadlines` x deadline, what is left of the budget); parse
        the contract.

        A dict body (numpy columns allowed) is encoded by orjson, bytes are sent as they are (the
        hot path builds its batches without model instances); tests/bff checks every body the
        fakes receive against the request models.
        """
        timeout = min(self.deadline_s * deadlines, end - time.perf_counter())
        if timeout < MIN_CALL_S:
            raise StageError(stage, "skipped")
        if isinstance(body, bytes):
            payload = body
        elif isinstance(body, BaseModel):
            payload = body.model_dump_json().encode()
        else:
            payload = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            status, content = await self.client.post(url, payload, timeout)
        except TimeoutError:
            raise StageError(stage, "timeout") from None
        except ResponseTooLarge as exc:
            log.warning("%s: %s", stage, exc)
            raise StageError(stage, "too_large") from None
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

    @property
    def _hot_url(self) -> str:
        """recall's /hot; in the compact topology the pipeline function serves it."""
        return self._url(self.settings.pipeline_url or self.settings.recall_url, "/hot")

    async def _hot(self, n: int, end: float, degraded: list[str]) -> tuple[list[HotItem], str]:
        """recall's /hot, else the last good hot list, else []."""
        try:
            hot = await self._call(
                "hot", self._hot_url, HotRequest(n=n), _PARSE_HOT, end
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
                    "hot", self._hot_url, HotRequest(n=100), _PARSE_HOT, end
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
        # A guest (no user_id): the session's recent items stand in for the profile (zerorec.feedback).
        user_id = req.user_id or GUEST_USER_ID
        variant, arm = self.assigner.assign(user_id)  # guests share one arm
        s = self._settings_for(arm)
        degraded: list[str] = []
        timings: dict[str, float] = {}
        versions: dict[str, str] = {}
        stages = self._compact if s.pipeline_url else self._per_service
        final, source = await stages(req, s, arm, end, timings, versions, degraded)
        final = _dedupe(final)
        for position, f in enumerate(final, start=1):
            f.position = position
        rec_id = new_recommendation_id()
        recording = asyncio.ensure_future(  # runs alongside item hydration
            self.served_log.record(
                Served(rec_id, user_id, variant, tuple((f.item_id, f.channel) for f in final), versions)
            )
        )

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
        await recording
        timings["total"] = round((time.perf_counter() - start) * 1000, 3)
        record_recommendation(source, degraded)  # zerorec_recommendations / zerorec_degraded
        return RecommendResponse(
            user_id=user_id,
            items=final,
            source=source,
            degraded=degraded,
            timings_ms=timings,
            model_versions=versions,
            recommendation_id=rec_id,
            variant=variant,
        )

    async def _per_service(
        self,
        req: RecommendRequest,
        s: Settings,
        arm: Variant | None,
        end: float,
        timings: dict[str, float],
        versions: dict[str, str],
        degraded: list[str],
    ) -> tuple[list[RecommendedItem], str]:
        """(items, source) from the user, recall, ranking and reranking functions (`s`: the
        settings of the user's experiment arm)."""
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

        # 2. candidates: recall's batch, or the hot list; 3. ranking, then 4. reranking.
        final: list[RecommendedItem]
        if not isinstance(recall_res, StageError):
            source = "personalized"
            batch, body = recall_res
            if batch.model_version:
                versions["recall"] = batch.model_version
            drop = member_of(batch.item_ids, excluded)
            if drop.any():  # recall honours `exclude`: this guards one that did not
                batch, body = batch.take(~drop), b""
            final = await self._rank_and_rerank(
                req, s, arm, batch, body, seen, blocked, end, timings, versions, degraded
            )
        else:
            degraded.append(recall_res.reason)
            final, source = await self._hot_items(req, blocked, end, timings, degraded)
        return final, source

    async def _compact(
        self,
        req: RecommendRequest,
        s: Settings,
        arm: Variant | None,
        end: float,
        timings: dict[str, float],
        versions: dict[str, str],
        degraded: list[str],
    ) -> tuple[list[RecommendedItem], str]:
        """(items, source) from the pipeline function (the compact topology: it reads the user's
        seen items itself); the user function is asked only for the hot-list fallback."""
        excluded = set(req.exclude)
        body = PipelineRequest(
            user_id=req.user_id or GUEST_USER_ID,
            recent_items=req.recent_items,
            n=req.n,
            candidates=max(s.recall_candidates, req.n),
            exclude=req.exclude,
            context=req.context,
        )
        res = await self._timed(
            "pipeline",
            timings,
            # the work of three calls (recall, ranking, reranking): their three deadlines
            self._call("pipeline", self._url(s.pipeline_url), body, _PARSE_PIPELINE, end, deadlines=3),
        )
        if not isinstance(res, StageError):
            if res.model_version:
                versions["pipeline"] = res.model_version
            items = [
                RecommendedItem(item_id=r.item_id, score=r.score, channel=r.channel, reasons=r.reasons)
                for r in res.items
                if r.item_id not in excluded
            ]
            return items[: req.n], "personalized"
        degraded.append(res.reason)
        if req.user_id is None:  # a guest: the session's items are what it has seen
            user_res: UserProfile | StageError = await _guest_profile(req.recent_items)
        else:
            ask = UserRequest(user_id=req.user_id)
            call = self._call("user", self._url(s.user_url), ask, _PARSE_USER, end)
            user_res = await self._timed("user", timings, call)
        seen: list[str] = []
        if isinstance(user_res, StageError):
            if user_res.cause != "http_404":
                degraded.append(user_res.reason)
        else:
            seen = user_res.seen_items
        return await self._hot_items(req, excluded | set(seen), end, timings, degraded)

    async def _hot_items(
        self,
        req: RecommendRequest,
        blocked: set[str],
        end: float,
        timings: dict[str, float],
        degraded: list[str],
    ) -> tuple[list[RecommendedItem], str]:
        """(items, source) of the hot list (recall's, else the last good one), `blocked` removed."""
        t = time.perf_counter()
        hot, source = await self._hot(min(req.n + len(blocked), MAX_CANDIDATES), end, degraded)
        timings["hot"] = round((time.perf_counter() - t) * 1000, 3)
        final: list[RecommendedItem] = []
        for h in hot:
            if h.item_id not in blocked:
                channel = h.channel or "hot"
                final.append(RecommendedItem(item_id=h.item_id, score=h.score, channel=channel))
                if len(final) == req.n:
                    break
        return final, source

    async def _rank_and_rerank(
        self,
        req: RecommendRequest,
        s: Settings,
        arm: Variant | None,
        batch: CandidateBatch,
        body: bytes,
        seen: list[str],
        blocked: set[str],
        end: float,
        timings: dict[str, float],
        versions: dict[str, str],
        degraded: list[str],
    ) -> list[RecommendedItem]:
        """Ranking's scores for recall's batch (its `body` forwarded as received when given), then
        reranking of the batch in score order; recall's order where ranking fails, the top of the
        ranked batch where reranking does. An experiment arm without ranking serves recall's
        order (reranked all the same)."""
        if not len(batch):
            return []
        ranking_off = arm is not None and not arm.ranking
        rank_res = StageError("ranking", "off") if ranking_off else await self._timed(
            "ranking",
            timings,
            self._call(
                "ranking", self._url(s.ranking_url), ranking_body(req, batch, body), parse_ranking, end
            ),
        )
        if not isinstance(rank_res, StageError) and len(rank_res[0]) != len(batch):
            rank_res = StageError("ranking", "bad_response")
        # recall's `demote` (zerorec.feedback): neighbours of the user's dislikes go down after ranking
        if isinstance(rank_res, StageError):
            if rank_res.cause != "off":
                degraded.append(rank_res.reason)
            ranked = dataclasses.replace(batch, scores=demoted(batch.scores, batch.demote))  # recall order
        else:
            scores, rank_version = rank_res
            if rank_version:
                versions["ranking"] = rank_version
            scores = demoted(scores, batch.demote)
            ranked = dataclasses.replace(batch, scores=scores).take(np.argsort(-scores, kind="stable"))
        rerank_res = await self._timed(
            "reranking",
            timings,
            self._call(
                "reranking",
                self._url(s.reranking_url),
                {
                    "user_id": req.user_id or GUEST_USER_ID,
                    "candidates": {
                        "item_ids": ranked.item_ids,
                        "scores": ranked.scores,
                        "channel": ranked.channel,
                        "channels": ranked.channels,
                    },
                    "n": req.n,
                    "seen": seen,
                },
                _PARSE_RERANK,
                end,
            ),
        )
        if isinstance(rerank_res, StageError):
            degraded.append(rerank_res.reason)
            return _top(ranked, blocked, req.n)
        excluded = set(req.exclude)
        return [
            RecommendedItem(item_id=r.item_id, score=r.score, channel=r.channel, reasons=r.reasons)
            for r in rerank_res.items
            if r.item_id not in excluded
        ][: req.n]


def ranking_body(req: RecommendRequest, batch: CandidateBatch, recalled: bytes) -> bytes:
    """RankingRequest's JSON: recall's body spliced in as it came (`recalled`: a RecallResponse,
    so a CandidateColumns with its signals), else the batch re-encoded."""
    columns = recalled or orjson.dumps(batch.to_wire(), option=orjson.OPT_SERIALIZE_NUMPY)
    head = orjson.dumps({"user_id": req.user_id or GUEST_USER_ID, "context": req.context})
    return b"".join((head[:-1], b',"candidates":', columns, b"}"))


async def _guest_profile(recent_items: list[str]) -> UserProfile:
    """A guest's profile: the session's items, which are also not to be shown again."""
    return UserProfile(user_id=GUEST_USER_ID, recent_items=recent_items, seen_items=recent_items, is_new=True)


def _top(batch: CandidateBatch, blocked: set[str], n: int) -> list[RecommendedItem]:
    """The first `n` items of `batch` that are not `blocked`."""
    rows = np.flatnonzero(~member_of(batch.item_ids, blocked))[:n].tolist()
    return [
        RecommendedItem(
            item_id=batch.item_ids[k], score=float(batch.scores[k]), channel=batch.channels[batch.channel[k]]
        )
        for k in rows
    ]


def _dedupe(items: list[RecommendedItem]) -> list[RecommendedItem]:
    seen: set[str] = set()
    out = []
    for it in items:
        if it.item_id not in seen:
            seen.add(it.item_id)
            out.append(it)
    return out
