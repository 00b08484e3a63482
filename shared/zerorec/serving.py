"""What every serving function's handler shares: body parsing, JSON replies, the model slot.

A handler stays thin: `parse(request, Model)` (4xx with a reason on bad input), one call into
zerorec (through `ModelSlot.current`), `json_response(...)`. `ModelSlot` holds the loaded bundle:
it loads at cold start (import time, before the port opens), reloads in the background on a
`dev.zerorec.model.published.v1` CloudEvent and swaps atomically; a bundle that fails
verification (IntegrityError) or loading is refused and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from zerorec.api import MAX_BODY_BYTES, is_json_error, validation_reason
from zerorec.errors import InvalidInputError, NotFoundError, ZeroRecError
from zerorec.observability.metrics import model_loaded, model_refused
from zerorec.request_body import BodyTooLarge, read_limited

log = logging.getLogger("zerorec.serving")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

MODEL_PUBLISHED = "dev.zerorec.model.published.v1"
EVENTS_PATH = "/events/model-published"


class HTTPError(Exception):
    """A 4xx (or 503) with a reason; `error_response` turns it into the JSON error body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response from a model, bytes already encoded, or plain data (orjson)."""
    if isinstance(body, BaseModel):
        payload: bytes | str = body.model_dump_json()
    elif isinstance(body, bytes | str):
        payload = body
    else:
        payload = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(payload, status_code=status, media_type="application/json")


def error_response(status: int, reason: str) -> Response:
    """`{"error": reason}` with the given status."""
    return json_response({"error": reason}, status)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body; HTTPError 413 past `limit` bytes (without reading it all), 400 on disconnect."""
    try:
        return await read_limited(request, limit)
    except BodyTooLarge as exc:
        raise HTTPError(413, exc.reason) from None
    except ClientDisconnect:
        raise HTTPError(400, "client disconnected") from None


async def parse(request: Request, model: type[M], limit: int = MAX_BODY_BYTES) -> M:
    """Read and validate a JSON body: 405 unless POST, 413 too large, 400 not JSON, 422 invalid."""
    if request.method != "POST":
        raise HTTPError(405, f"use POST {request.url.path} with a JSON body")
    body = await read_body(request, limit)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPError(400 if is_json_error(exc) else 422, validation_reason(exc)) from None


def route(request: Request) -> str:
    """The request path without a trailing slash ('/' for the root)."""
    return request.url.path.rstrip("/") or "/"


async def guard(call: Callable[[], Any]) -> Response:
    """Run a handler body: HTTPError -> its status; InvalidInputError -> 422; NotFoundError -> 404;
    anything else -> 500 'internal error' (logged), never a traceback to the caller."""
    try:
        return await call()
    except HTTPError as exc:
        return error_response(exc.status, exc.reason)
    except InvalidInputError as exc:
        return error_response(422, str(exc))
    except NotFoundError as exc:
        return error_response(404, str(exc))
    except Exception:
        log.exception("handler failed")
        return error_response(500, "internal error")


# ---------------------------------------------------------------------------------- model slot


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """One loaded model version and what was built from it."""

    version: str
    value: T
    loaded_at: float
    load_ms: float


class ModelSlot(Generic[T]):
    """Holds the current model; `load` builds a new one off to the side and swaps it in atomically.

    `loader(version)` fetches, verifies and builds (e.g. `online.load_model`); it returns
    `(version, value)`. Requests read `slot.current` once and use that object to the end, so a swap
    never changes a model under a running request. Loads are serialised; a failed load leaves the
    current model in place and records `last_error`.
    """

    def __init__(
        self,
        name: str,
        loader: Callable[[str], tuple[str, T]],
        retry_s: float = 5.0,
        *,
        latest: Callable[[], str] | None = None,
        poll_s: float = 0.0,
    ) -> None:
        """`latest()` names the version LATEST points at (one small read); with `poll_s` > 0 the
        slot checks it that often and loads a new version it has not been told about. Knative
        delivers a model.published event to ONE pod of a Service: polling is how the others follow."""
        self.name = name
        self._loader = loader
        self._lock = threading.Lock()
        self._current: Loaded[T] | None = None
        self.last_error: str | None = None
        self.retry_s = retry_s
        self._latest = latest
        self.poll_s = poll_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_check = 0.0

    @property
    def current(self) -> Loaded[T] | None:
        return self._current

    @property
    def version(self) -> str | None:
        cur = self._current
        return cur.version if cur else None

    def require(self) -> Loaded[T]:
        """The current model; HTTPError 503 while none is loaded."""
        cur = self._current
        if cur is None:
            raise HTTPError(503, f"model {self.name!r} not loaded yet: {self.last_error or 'loading'}")
        return cur

    def load(self, version: str = "latest") -> bool:
        """Load `version` (blocking) and swap it in; False (old model kept) if it fails."""
        with self._lock:
            if version != "latest" and self.version == version:
                return True
            t0 = time.perf_counter()
            try:
                got, value = self._loader(version)
            except ZeroRecError as exc:  # IntegrityError, NotFoundError, BackendUnavailableError ...
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("model %s/%s refused: %s", self.name, version, self.last_error)
                model_refused(self.name)
                return False
            except Exception as exc:  # a bundle that verifies but does not build is refused too
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("model %s/%s failed to build", self.name, version)
                model_refused(self.name)
                return False
            ms = (time.perf_counter() - t0) * 1000
            self._current = Loaded(got, value, time.time(), round(ms, 1))
            self.last_error = None
            model_loaded(self.name, got, ms)  # zerorec_model_info / zerorec_model_load_seconds
            log.warning("model %s/%s loaded in %.0f ms", self.name, got, ms)
            return True

    def reload_in_background(self, version: str = "latest") -> asyncio.Task[bool]:
        """Schedule `load(version)` in a worker thread; requests keep the old model meanwhile."""
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.load, version))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def refresh_if_due(self) -> None:
        """Cheap enough for every request: while nothing is loaded, retry in the background every
        `retry_s`; once loaded, every `poll_s` ask `latest()` and load a version that moved."""
        now = time.monotonic()
        if self._tasks or now < self._next_check:
            return
        if self._current is None:
            self._next_check = now + self.retry_s
            self.reload_in_background()
        elif self._latest is not None and self.poll_s > 0:
            self._next_check = now + self.poll_s
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._follow_latest))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _follow_latest(self) -> bool:
        assert self._latest is not None
        try:
            version = self._latest()
        except ZeroRecError as exc:  # the store is down: keep serving what we have
            log.warning("model %s: LATEST not readable: %s", self.name, exc)
            return False
        return version == self.version or self.load(version)

    def health(self, ready_without_model: bool = False) -> Response:
        """GET /health: 200 with the model version once loaded; until then 503 with the `reason`
        (e.g. no bundle published yet, and what to do about it) while the slot keeps retrying.
        `ready_without_model`: 200 (status 'degraded') instead, for a function that serves routes
        without a model (item's catalogue admin)."""
        self.refresh_if_due()
        cur = self._current
        body: dict[str, Any] = {"status": "ok" if cur else "loading", "model": self.name}
        body["model_version"] = self.version
        if cur:
            body["load_ms"] = cur.load_ms
        else:
            body["reason"] = f"model {self.name!r} not loaded: {self.last_error or 'first load in progress'}"
            body["retry_s"] = self.retry_s
            if ready_without_model:
                body["status"] = "degraded"
        if self.last_error:
            body["last_error"] = self.last_error
        return json_response(body, 200 if cur or ready_without_model else 503)

    async def on_event(self, request: Request) -> Response:
        """POST /events/model-published: a model.published CloudEvent (binary or structured).

        202 and a background reload when it names this slot's model. Refused, and nothing loaded:
        400 for something that is not a valid CloudEvent, 422 for any other event type (a PingSource
        event wrapping one included) and for a bundle of another name (a vectors bundle, another
        model): only this function's own model ever becomes what it serves.
        """
        from zerorec.cloudevents_io import event_data, from_http, validate

        if request.method != "POST":
            raise HTTPError(405, f"POST a {MODEL_PUBLISHED} CloudEvent to {EVENTS_PATH}")
        body = await read_body(request)
        try:
            event = from_http(dict(request.headers), body)
        except (InvalidInputError, ValueError) as exc:
            raise HTTPError(400, f"not a valid CloudEvent: {exc}") from None
        if event.get("type") != MODEL_PUBLISHED:
            raise HTTPError(422, f"expected a {MODEL_PUBLISHED} event, got {event.get('type')!r}")
        try:
            validate(event)
        except (InvalidInputError, ValueError) as exc:
            raise HTTPError(400, f"not a valid CloudEvent: {exc}") from None
        data = event_data(event)
        if data["name"] != self.name:
            raise HTTPError(
                422,
                f"bundle {data['name']!r} is not this function's model: it serves only {self.name!r} "
                "(ZEROREC_MODEL_NAME); nothing loaded",
            )
        self.reload_in_background(str(data["version"]))
        return json_response(
            {"status": "reloading", "version": data["version"], "current": self.version}, 202
        )


# ---------------------------------------------------------------------------------- dispatch

Route = Callable[[Request, Any], Any]  # async (request, stage) -> Response
FreeRoute = Callable[[Request], Any]  # async (request) -> Response: needs no model


def dispatch(
    slot: ModelSlot[Any],
    routes: dict[str, Route],
    free_routes: dict[str, FreeRoute] | None = None,
    openapi: Callable[[], dict[str, Any]] | None = None,
) -> Callable[[Request], Any]:
    """The whole request path of a serving function: `GET /health`, `POST /events/model-published`,
    then `routes[path](request, stage)` with the current stage (503 while none is loaded), or
    `free_routes[path](request)`, which serve without a model; 404 for any other path; errors as
    JSON (see `guard`). With free routes the function is Ready (/health 200, 'degraded') before its
    first model: Knative routes no request to a pod that is not Ready. `openapi()` builds the
    function's OpenAPI document, served (built once) at `GET /openapi.json`."""
    free = dict(free_routes or {})
    known = ", ".join([*routes, *free])
    document: list[bytes] = []

    def openapi_body() -> Response:
        if openapi is None:
            raise HTTPError(404, "this function publishes no OpenAPI document")
        if not document:
            document.append(orjson.dumps(openapi(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        return json_response(document[0])

    async def handle(request: Request) -> Response:
        slot.refresh_if_due()
        path = route(request)
        if path == "/health":
            if request.method not in ("GET", "HEAD"):
                raise HTTPError(405, "use GET /health")
            return slot.health(ready_without_model=bool(free))
        if path == EVENTS_PATH:
            return await slot.on_event(request)
        if path == "/openapi.json" and openapi is not None:  # else a route may serve it
            if request.method not in ("GET", "HEAD"):
                raise HTTPError(405, "use GET /openapi.json")
            return openapi_body()
        if path in free:
            return await free[path](request)
        target = routes.get(path)
        if target is None:
            raise HTTPError(404, f"no route {path} (routes: /health, {EVENTS_PATH}, {known})")
        return await target(request, slot.require().value)

    async def guarded(request: Request) -> Response:
        return await guard(lambda: handle(request))

    return guarded


async def offload(fn: Callable[..., Any], *args: Any) -> Response:
    """Run the CPU-bound `fn(*args)` and its JSON encoding in a worker thread (off the event loop)."""
    return await asyncio.to_thread(lambda: json_response(fn(*args)))
