"""consumer, CloudEvents sink of the KafkaSources (behavior and item topics), `GET /health`.

One binary or structured CloudEvent per POST, as the KafkaSource delivers it. 200 once its writes
are in the KV (or it was applied before: idempotent by event id); 400 for an event it must refuse
(unknown type, schema violation, malformed: the KafkaSource dead-letters it at once, no retries);
503 when the KV is unreachable (the KafkaSource retries with backoff).
Run: `functions-framework --target consumer --source functions/consumer/main.py --port 8087`.
Logic: zerorec.consumer.
"""

from __future__ import annotations

import asyncio
import logging

import functions_framework.aio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from zerorec.cloudevents_io import from_http
from zerorec.consumer import EventApplier
from zerorec.errors import BackendUnavailableError, InvalidInputError
from zerorec.settings import get_settings
from zerorec.storage import kv_store

log = logging.getLogger("zerorec.consumer")
_settings = get_settings()
_applier = EventApplier(kv_store(_settings), category_cache_s=_settings.consumer_category_cache_s)


def _json(doc: object, status: int) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


@functions_framework.aio.http
async def consumer(request: Request) -> Response:
    """POST /: apply one CloudEvent; GET /health."""
    if request.url.path.rstrip("/") == "/health":
        return _json({"status": "ok"}, 200)
    if request.method != "POST":
        return _json({"error": "POST a CloudEvent"}, 405)
    try:
        body = await request.body()
        event = from_http(dict(request.headers), body)
        applied = await asyncio.to_thread(_applier.apply, event)
    except ClientDisconnect:
        return _json({"error": "client disconnected"}, 400)
    except InvalidInputError as exc:
        log.warning("refused event: %s", exc)
        return _json({"error": str(exc)}, 400)
    except BackendUnavailableError as exc:
        log.warning("kv unavailable: %s", exc)
        return _json({"error": f"key-value store unavailable, retry: {exc}"}, 503)
    except Exception:  # a bug: 500 makes the KafkaSource retry, then dead-letter
        log.exception("apply failed")
        return _json({"error": "internal error"}, 500)
    return _json(applied.to_json(), 200)
