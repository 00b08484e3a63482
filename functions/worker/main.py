"""worker, CloudEvents: data-sync tasks (replaces the Celery worker), `GET /health`, `GET /openapi.json`.

Takes `dev.zerorec.task.*` events over HTTP, and the same tasks from PingSources
(`dev.knative.sources.ping` with the `zerorectype` extension). 200 with the task's report; 400 for
an invalid task event; 422 when the task's input does not exist or cannot be read; 503 when a store
or the bus is unreachable.
Run: `python -m zerorec.runner --target worker --source functions/worker/main.py --port 8088`.
Logic: zerorec.tasks.
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from zerorec.openapi_docs import openapi_response
from zerorec.settings import get_settings
from zerorec.storage import event_bus, kv_store, object_store
from zerorec.task_function import task_handler
from zerorec.tasks import Stores, run_task, warm_up

warm_up()  # pyarrow's one-off imports at cold start, not inside a PingSource's delivery timeout
_settings = get_settings()
_stores = Stores(_settings, event_bus(_settings), kv_store(_settings), object_store(_settings))
_handle = task_handler("worker", lambda kind, data: run_task(kind, data, _stores))


@functions_framework.aio.http
async def worker(request: Request) -> Response:
    """POST /: run the task of one CloudEvent; GET /health, GET /openapi.json."""
    if request.url.path == "/openapi.json":
        return openapi_response("worker", request.method)
    return await _handle(request)
