"""consumer, CloudEvents sink of the KafkaSources (behavior and item topics), `GET /health`,
`GET /openapi.json`.

One binary or structured CloudEvent per POST, as the KafkaSource delivers it. 200 once its writes
are in the KV (or it was applied before: idempotent by event id); 400 for an event it must refuse
(unknown type, schema violation, malformed: the KafkaSource dead-letters it at once, no retries);
503 when the KV is unreachable (the KafkaSource retries with backoff).

Batched mode (`content-type: application/cloudevents-batch+json`, a JSON array of structured events;
only the local dispatcher's opt-in throughput mode sends it): 200 with `{"results": [...]}`, one per
event in order, each with its own status (200 applied or duplicate, 400 refused, 503/500 retry); the
batch's behavior events are applied in ONE KV round trip, exactly once per event id. 400 for a body
that is no batch at all, 503 when the KV is unreachable for every event.

Bodies are read with a limit (413 past it, never buffered whole): one CloudEvent's maximum size,
or ZEROREC_CONSUMER_MAX_BATCH_BYTES for a batch.

The KV work runs in a worker thread, never on the event loop: a slow or stalled Redis then delays only
the deliveries that wait on it, while `GET /health` and the decoding of other deliveries go on.
Run: `python -m zerorec.runner --target consumer --source functions/consumer/main.py --port 8087`.
Logic: zerorec.consumer.
"""

from __future__ import annotations

import asyncio
import logging

import functions_framework.aio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from zerorec.cloudevents_io import BATCH, MAX_BODY_BYTES, from_http, from_http_batch
from zerorec.consumer import EventApplier
from zerorec.errors import BackendUnavailableError, InvalidInputError
from zerorec.feedback import configured_weights
from zerorec.openapi_docs import openapi_response
from zerorec.request_body import BodyTooLarge, read_limited
from zerorec.settings import get_settings
from zerorec.storage import kv_store

log = logging.getLogger("zerorec.consumer")
_settings = get_settings()
_applier = EventApplier(
    kv_store(_settings),
    category_cache_s=_settings.consumer_category_cache_s,
    dedupe_window_s=_settings.dedupe_window_s,
    weights=configured_weights(_settings),
)


def _json(doc: object, status: int) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@functions_framework.aio.http
async def consumer(request: Request) -> Response:
    """POST /: apply one CloudEvent, or a batch; GET /health, GET /openapi.json."""
    if request.url.path.rstrip("/") == "/health":
        if request.method not in ("GET", "HEAD"):
            return _json({"error": "use GET /health"}, 405)
        return _json({"status": "ok", "loop": _loop_name()}, 200)
    if request.url.path == "/openapi.json":
        return openapi_response("consumer", request.method)
    if request.method != "POST":
        return _json({"error": "POST a CloudEvent"}, 405)
    batched = request.headers.get("content-type", "").lower().startswith(BATCH)
    try:
        body = await read_limited(request, _settings.consumer_max_batch_bytes if batched else MAX_BODY_BYTES)
        if batched:
            results = await asyncio.to_thread(_applier.apply_batch, from_http_batch(body))
            if results and all(r["status"] == 503 for r in results):
                return _json({"error": results[0]["error"], "results": results}, 503)
            return _json({"results": results}, 200)
        event = from_http(request.headers, body)
        applied = await asyncio.to_thread(_applier.apply, event)
    except BodyTooLarge as exc:
        return _json({"error": exc.reason}, 413)
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
