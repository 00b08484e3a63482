"""behavior, HTTP: `POST /events` (one event, an array, {"events": [...]} or a CloudEvent),
`POST /events/import` (a bulk import: JSON lines or Parquet, e.g. the worker's export; rows keep their
`event_id`), `GET /health`, `GET /openapi.json`.

Answers 202 with per-event results only after Kafka acknowledged every accepted event; 400/413 for
bad input (with reasons), 401 for a wrong X-API-Key, 503 when the broker did not acknowledge in time.
With a real backend and no ZEROREC_BEHAVIOR_API_KEY it refuses to start (exit 1) unless
ZEROREC_ALLOW_UNAUTHENTICATED=1.
Run: `python -m zerorec.runner --target behavior --source functions/behavior/main.py --port 8086`.
Logic: zerorec.ingest.
"""

from __future__ import annotations

import asyncio
import logging

import functions_framework.aio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from zerorec.cloudevents_io import from_http
from zerorec.errors import BackendUnavailableError, DeliveryError, InvalidInputError
from zerorec.ingest import (
    IMPORT_MAX_BODY_BYTES,
    BatchTooLargeError,
    BehaviorIngest,
    IngestResult,
    check_api_key,
)
from zerorec.openapi_docs import openapi_response
from zerorec.request_body import BodyTooLarge, read_limited
from zerorec.settings import get_settings, require_api_key
from zerorec.storage import event_bus

log = logging.getLogger("zerorec.behavior")
_settings = get_settings()
require_api_key(_settings, _settings.behavior_api_key, "ZEROREC_BEHAVIOR_API_KEY", "behavior (POST /events)")
_ingest = BehaviorIngest(
    event_bus(_settings), _settings.topic_behavior, max_batch=_settings.behavior_max_batch
)


def _json(doc: object, status: int) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _error(reason: str, status: int) -> Response:
    return _json({"error": reason}, status)


def _is_cloudevent(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").lower()
    return "ce-specversion" in request.headers or ctype.startswith("application/cloudevents+json")


IMPORT_PATH = "/events/import"


def _import(body: bytes, content_type: str) -> IngestResult:
    from zerorec.platform_api import read_feedback  # the bulk routes' library, loaded on first use

    return _ingest.accept_import(*read_feedback(body, content_type))


@functions_framework.aio.http
async def behavior(request: Request) -> Response:
    """Route on path: POST /events, GET /health, GET /openapi.json."""
    path = request.url.path.rstrip("/") or "/"
    if path == "/health":
        if request.method not in ("GET", "HEAD"):
            return _error("use GET /health", 405)
        return _json({"status": "ok", "topic": _ingest.topic}, 200)
    if path == "/openapi.json":
        return openapi_response("behavior", request.method)
    if path not in ("/events", "/", IMPORT_PATH):
        return _error(f"no route {path}; use POST /events", 404)
    if request.method != "POST":
        return _error(f"use POST {path}", 405)
    if not check_api_key(_settings.behavior_api_key, request.headers.get("x-api-key")):
        return _error("missing or wrong X-API-Key", 401)
    limit = _settings.behavior_max_body_bytes if path != IMPORT_PATH else IMPORT_MAX_BODY_BYTES
    try:
        body = await read_limited(request, limit)
    except BodyTooLarge as exc:
        return _error(exc.reason, 413)
    except ClientDisconnect:
        return _error("client disconnected", 400)
    try:
        if path == IMPORT_PATH:
            ctype = request.headers.get("content-type", "")
            result: IngestResult = await asyncio.to_thread(_import, body, ctype)
        elif _is_cloudevent(request):
            event = from_http(dict(request.headers), body)
            result = await asyncio.to_thread(_ingest.accept_cloudevent, event)
        else:
            result = await asyncio.to_thread(_ingest.accept_json, body)
    except BatchTooLargeError as exc:
        return _error(str(exc), 413)
    except InvalidInputError as exc:
        return _error(str(exc), 400)
    except (DeliveryError, BackendUnavailableError) as exc:
        log.warning("publish failed: %s", exc)
        return _error(
            f"event bus unavailable, nothing acknowledged; retrying the same events is safe ({exc})", 503
        )
    except Exception:  # a bug, not bad input: say so without leaking internals
        log.exception("ingest failed")
        return _error("internal error", 500)
    if not result.accepted:
        return _json({"error": "no valid event in the request", **result.to_json()}, 400)
    return _json(result.to_json(), 202)
