"""worker, CloudEvents: data-sync tasks (replaces the Celery worker), `GET /health`.

Takes `dev.zerorec.task.*` events over HTTP, and the same tasks from PingSources
(`dev.knative.sources.ping` with the `zerorectype` extension). 200 with the task's report; 400 for
an invalid task event; 422 when the task's input does not exist or cannot be read; 503 when a store
or the bus is unreachable.
Run: `functions-framework --target worker --source functions/worker/main.py --port 8088`.
Logic: zerorec.tasks.
"""

from __future__ import annotations

import asyncio
import logging

import functions_framework.aio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from zerorec.cloudevents_io import effective_type, event_data, from_http, validate
from zerorec.errors import BackendUnavailableError, DeliveryError, InvalidInputError, NotFoundError
from zerorec.settings import get_settings
from zerorec.storage import event_bus, kv_store, object_store
from zerorec.tasks import Stores, run_task

log = logging.getLogger("zerorec.worker")
_settings = get_settings()
_stores = Stores(_settings, event_bus(_settings), kv_store(_settings), object_store(_settings))


def _json(doc: object, status: int) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


@functions_framework.aio.http
async def worker(request: Request) -> Response:
    """POST /: run the task of one CloudEvent; GET /health."""
    if request.url.path.rstrip("/") == "/health":
        return _json({"status": "ok"}, 200)
    if request.method != "POST":
        return _json({"error": "POST a task CloudEvent"}, 405)
    try:
        event = from_http(dict(request.headers), await request.body())
        validate(event)
        report = await asyncio.to_thread(run_task, effective_type(event), event_data(event), _stores)
    except ClientDisconnect:
        return _json({"error": "client disconnected"}, 400)
    except NotFoundError as exc:
        return _json({"error": str(exc)}, 422)
    except InvalidInputError as exc:
        return _json({"error": str(exc)}, 400)
    except (BackendUnavailableError, DeliveryError) as exc:
        log.warning("task failed on a backend: %s", exc)
        return _json({"error": f"backend unavailable, retry: {exc}"}, 503)
    except Exception:
        log.exception("task failed")
        return _json({"error": "internal error"}, 500)
    return _json(report, 200)
