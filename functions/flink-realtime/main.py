"""flink-realtime, HTTP: control of the PyFlink real-time feature job (jobs.flink_realtime).

  GET  /health   200 {"status": "ok", "running": bool}
  GET  /status   the job: running, pid, uptime, options, exit code, last log lines
  POST /start    start it (JSON body, all optional: window_s, startup, group, topic, key_prefix,
                 checkpoint_s, resume); it resumes from its newest retained checkpoint, else
                 (startup "recent") recounts the last hour of the log (the sink's writes are
                 idempotent); 200 with its status ("started": false when one already runs)
  POST /stop     stop it (SIGTERM to its process group, SIGKILL after a grace period)

400 for bad options; 413 for a body over 16 KiB; 422 when the Flink interpreter or the connector
jar is missing. The job runs in its own interpreter (ZEROREC_FLINK_PYTHON) and stops with this
function (atexit); with ZEROREC_FLINK_AUTOSTART=1 it starts with the function, default options
(on Knative: min-scale 1, so the job is never scaled to zero).
Run: `python -m zerorec.runner --target flink_realtime --source functions/flink-realtime/main.py --port 8094`.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
from pathlib import Path

import functions_framework.aio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from zerorec.errors import InvalidInputError, NotFoundError
from zerorec.request_body import BodyTooLarge, read_limited
from zerorec.settings import get_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for jobs.*
from jobs.flink_realtime.control import FlinkJobController, JobOptions

log = logging.getLogger("zerorec.flink_realtime")
MAX_OPTIONS_BYTES = 16 * 1024  # a handful of options: anything bigger is refused unread
_controller = FlinkJobController(get_settings())
atexit.register(_controller.stop)
if os.environ.get("ZEROREC_FLINK_AUTOSTART") == "1":
    try:
        _controller.start(JobOptions())
    except (NotFoundError, InvalidInputError) as exc:
        log.error("autostart failed: %s", exc)


def _json(doc: object, status: int) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


async def _options(request: Request) -> JobOptions:
    body = await read_limited(request, MAX_OPTIONS_BYTES)
    if not body.strip():
        return JobOptions()
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidInputError("body must be a JSON object of options")
    return JobOptions.from_json(raw)


@functions_framework.aio.http
async def flink_realtime(request: Request) -> Response:
    """Start, stop and report the PyFlink job."""
    path = request.url.path.rstrip("/") or "/"
    try:
        if path == "/health":
            return _json({"status": "ok", "running": _controller.status()["running"]}, 200)
        if path == "/status" and request.method == "GET":
            return _json(_controller.status(), 200)
        if path == "/start" and request.method == "POST":
            opts = await _options(request)
            return _json(await asyncio.to_thread(_controller.start, opts), 200)
        if path == "/stop" and request.method == "POST":
            return _json(await asyncio.to_thread(_controller.stop), 200)
    except BodyTooLarge as exc:
        return _json({"error": exc.reason}, 413)
    except ClientDisconnect:
        return _json({"error": "client disconnected"}, 400)
    except InvalidInputError as exc:
        return _json({"error": str(exc)}, 400)
    except NotFoundError as exc:
        return _json({"error": str(exc)}, 422)
    except Exception:
        log.exception("flink-realtime control failed")
        return _json({"error": "internal error"}, 500)
    return _json({"error": "GET /status, POST /start, POST /stop"}, 404)
