"""One handler shape for the CloudEvent-triggered task functions (worker, model-training,
feature-engineering, vector-generation): a task event in over HTTP (binary or structured, or a
PingSource event naming the task in its `zerorectype` extension), a JSON report out.

Status codes, the same everywhere: 200 with the task's report; 400 for an invalid event or a task
type the function does not run; 413 for a body over one CloudEvent's maximum size (read with that
limit, never buffered whole); 405 for a method other than POST; 409 when the function already
runs a task that must not overlap; 422 when the task's input does not exist; 503 when a store or
the bus is unreachable (the sender retries); 500 only for a bug.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from zerorec.cloudevents_io import MAX_BODY_BYTES, effective_type, event_data, from_http, validate
from zerorec.errors import (
    BackendUnavailableError,
    DeliveryError,
    InvalidInputError,
    NotFoundError,
    ZeroRecError,
)
from zerorec.request_body import BodyTooLarge, read_limited

TaskRunner = Callable[[str, dict[str, Any]], dict[str, Any]]  # (task type, data) -> report


class TaskBusyError(ZeroRecError):
    """A task that must not overlap with itself is already running (answered 409)."""


def _json(doc: object, status: int) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def task_handler(
    name: str,
    run: TaskRunner,
    accepts: Collection[str] | None = None,
    health: Callable[[], dict[str, Any]] | None = None,
) -> Callable[[Request], Any]:
    """An ASGI request handler that runs `run(type, data)` off the event loop for each task event.

    `accepts` limits the task types (None: `run` decides); `health` adds fields to `GET /health`.
    """
    log = logging.getLogger(f"zerorec.{name}")

    async def handle(request: Request) -> Response:
        if request.url.path.rstrip("/") == "/health":
            if request.method not in ("GET", "HEAD"):
                return _json({"error": "use GET /health"}, 405)
            return _json({"status": "ok", **(health() if health else {})}, 200)
        if request.method != "POST":
            return _json({"error": "POST a task CloudEvent"}, 405)
        try:
            event = from_http(dict(request.headers), await read_limited(request, MAX_BODY_BYTES))
            validate(event)
            kind = effective_type(event)
            if accepts is not None and kind not in accepts:
                raise InvalidInputError(f"{name} takes {', '.join(sorted(accepts))}, not {kind}")
            report = await asyncio.to_thread(run, kind, event_data(event) or {})
        except BodyTooLarge as exc:
            return _json({"error": exc.reason}, 413)
        except ClientDisconnect:
            return _json({"error": "client disconnected"}, 400)
        except NotFoundError as exc:
            return _json({"error": str(exc)}, 422)
        except InvalidInputError as exc:
            return _json({"error": str(exc)}, 400)
        except TaskBusyError as exc:
            return _json({"error": str(exc)}, 409)
        except (BackendUnavailableError, DeliveryError) as exc:
            log.warning("%s task failed on a backend: %s", name, exc)
            return _json({"error": f"backend unavailable, retry: {exc}"}, 503)
        except Exception:  # a bug, not bad input: say so without leaking internals
            log.exception("%s task failed", name)
            return _json({"error": "internal error"}, 500)
        return _json(report, 200)

    return handle
