"""feature-engineering, CloudEvents: offline features with Spark (jobs.feature_engineering), `GET /health`.

Takes `dev.zerorec.task.feature-engineering.v1` over HTTP, or the same task from the PingSource
`feature-engineering` (`dev.knative.sources.ping` with the `zerorectype` extension). One run at a
time (Spark takes the pod's CPU): a second request while one runs gets 409. 200 with the job's
report; 400 for an invalid event; 422 when the export has nothing for the windows; 503 when a store
is unreachable. Spark: `ZEROREC_SPARK_MASTER` (default local[2]), `ZEROREC_SPARK_DRIVER_MEMORY` (512m).
Run: `functions-framework --target feature_engineering --port 8092 \
  --source functions/feature-engineering/main.py`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from pathlib import Path

import functions_framework.aio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from zerorec.cloudevents_io import effective_type, event_data, from_http, validate
from zerorec.errors import BackendUnavailableError, InvalidInputError, NotFoundError
from zerorec.settings import get_settings
from zerorec.storage import kv_store, object_store

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for jobs.*
from jobs.feature_engineering.job import FEATURE_ENGINEERING, config_from_task, run_features

log = logging.getLogger("zerorec.feature_engineering")
_settings = get_settings()
_objects, _kv = object_store(_settings), kv_store(_settings)
_busy = threading.Lock()
_SPARK = {
    "master": os.environ.get("ZEROREC_SPARK_MASTER", "local[2]"),
    "driver_memory": os.environ.get("ZEROREC_SPARK_DRIVER_MEMORY", "512m"),
}


def _json(doc: object, status: int) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


class Busy(Exception):
    """A feature job is already running."""


def _run(data: dict) -> dict:
    if not _busy.acquire(blocking=False):
        raise Busy
    try:
        return run_features(config_from_task(data, **_SPARK), _objects, _kv)
    finally:
        _busy.release()


@functions_framework.aio.http
async def feature_engineering(request: Request) -> Response:
    """POST /: run the feature job for one task CloudEvent; GET /health."""
    if request.url.path.rstrip("/") == "/health":
        return _json({"status": "ok", "running": _busy.locked()}, 200)
    if request.method != "POST":
        return _json({"error": "POST a task CloudEvent"}, 405)
    try:
        event = from_http(dict(request.headers), await request.body())
        validate(event)
        kind = effective_type(event)
        if kind != FEATURE_ENGINEERING:
            raise InvalidInputError(f"feature-engineering takes {FEATURE_ENGINEERING}, not {kind}")
        report = await asyncio.to_thread(_run, event_data(event) or {})
    except ClientDisconnect:
        return _json({"error": "client disconnected"}, 400)
    except NotFoundError as exc:
        return _json({"error": str(exc)}, 422)
    except InvalidInputError as exc:
        return _json({"error": str(exc)}, 400)
    except BackendUnavailableError as exc:
        log.warning("feature job failed on a backend: %s", exc)
        return _json({"error": f"backend unavailable, retry: {exc}"}, 503)
    except Busy:
        return _json({"error": "a feature job is already running"}, 409)
    except Exception:
        log.exception("feature job failed")
        return _json({"error": "internal error"}, 500)
    return _json(report, 200)
