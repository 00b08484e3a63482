"""recommender (BFF), HTTP: `POST /recommend`, `GET /health`, `GET /openapi.json`; and the platform API:
`POST /similar-items`, `/similar-users`, `/latest`, `/popular` (zerorec.bff_platform).

Run: `python -m zerorec.runner --target recommender --source functions/recommender/main.py --port 10071`
(an ASGI function: functions_framework.aio). Orchestration: zerorec.bff.
"""

from __future__ import annotations

import logging

import functions_framework.aio
import orjson
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from zerorec.api import MAX_BODY_BYTES, RecommendRequest, is_json_error, openapi_json, validation_reason
from zerorec.bff import Recommender
from zerorec.bff_platform import ROUTES as PLATFORM_ROUTES
from zerorec.bff_platform import StageFailed
from zerorec.request_body import BodyTooLarge, read_limited

log = logging.getLogger("zerorec.recommender")
_recommender: Recommender | None = None


def _recommender_instance() -> Recommender:
    """Created on first use, inside the server's event loop (the HTTP pool is bound to it)."""
    global _recommender
    if _recommender is None:
        _recommender = Recommender()
    return _recommender


def _json(body: bytes | str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _error(reason: str, status: int) -> Response:
    return _json(orjson.dumps({"error": reason}), status)


@functions_framework.aio.http
async def recommender(request: Request) -> Response:
    """Route on path: POST /recommend, GET /health, GET /openapi.json."""
    path = request.url.path.rstrip("/") or "/"
    method = request.method
    if path == "/health":
        if method not in ("GET", "HEAD"):
            return _error("use GET /health", 405)
        return _json(_recommender_instance().health().model_dump_json())
    if path == "/openapi.json":
        if method not in ("GET", "HEAD"):
            return _error("use GET /openapi.json", 405)
        return _json(openapi_json())  # built on first use (cached)
    if path in PLATFORM_ROUTES:  # similar items / users, latest, popular: zerorec.bff_platform
        return await _platform(request, path)
    if path not in ("/recommend", "/"):
        return _error(f"no route {path}; see /openapi.json", 404)
    if method != "POST":
        return _error("use POST /recommend with a JSON body", 405)

    try:
        body = await read_limited(request, MAX_BODY_BYTES)
    except BodyTooLarge as exc:
        return _error(exc.reason, 413)
    except ClientDisconnect:
        return _error("client disconnected", 400)
    try:
        req = RecommendRequest.model_validate_json(body)
    except ValidationError as exc:
        return _error(validation_reason(exc), 400 if is_json_error(exc) else 422)
    try:
        resp = await _recommender_instance().recommend(req)
    except Exception:  # a bug, not bad input: say so without leaking internals
        log.exception("recommend failed")
        return _error("internal error", 500)
    return _json(resp.model_dump_json())


async def _platform(request: Request, path: str) -> Response:
    """A platform route: validate, one call into zerorec.bff_platform, JSON (4xx/503 with a reason)."""
    if request.method != "POST":
        return _error(f"use POST {path} with a JSON body", 405)
    try:
        body = await read_limited(request, MAX_BODY_BYTES)
    except BodyTooLarge as exc:
        return _error(exc.reason, 413)
    except ClientDisconnect:
        return _error("client disconnected", 400)
    model, call = PLATFORM_ROUTES[path]
    try:
        req = model.model_validate_json(body)
    except ValidationError as exc:
        return _error(validation_reason(exc), 400 if is_json_error(exc) else 422)
    try:
        resp = await call(_recommender_instance(), req)
    except StageFailed as exc:
        return _error(exc.reason, exc.status)
    return _json(resp.model_dump_json())
