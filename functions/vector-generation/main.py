"""vector-generation, CloudEvents: item embeddings -> a faiss bundle (jobs.vector_generation), `GET /health`.

Takes `dev.zerorec.task.vector-generation.v1` over HTTP (or from a PingSource with `zerorectype`),
publishes the vectors bundle and a `dev.zerorec.model.published.v1` event on the bus. 200 with the
report; 400 for an invalid event; 422 when the source model or export does not exist; 503 when a
store or the bus is unreachable.
Run: `functions-framework --target vector_generation --port 8093 \
  --source functions/vector-generation/main.py`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import functions_framework.aio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from zerorec.cloudevents_io import effective_type, event_data, from_http, validate
from zerorec.errors import BackendUnavailableError, DeliveryError, InvalidInputError, NotFoundError
from zerorec.settings import get_settings
from zerorec.storage import event_bus, object_store

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for jobs.*
from jobs.vector_generation.job import DEFAULT_NAME, VECTOR_GENERATION, run_vectors

log = logging.getLogger("zerorec.vector_generation")
_settings = get_settings()
_objects, _bus = object_store(_settings), event_bus(_settings)


def _json(doc: object, status: int) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _run(data: dict) -> dict:
    return run_vectors(
        _objects,
        _bus,
        source=data.get("source", "bundle"),
        model=data.get("model", _settings.model_name),
        events_prefix=data.get("events_prefix", "exports/events"),
        name=data.get("name", DEFAULT_NAME),
        factors=data.get("factors", 64),
    )


@functions_framework.aio.http
async def vector_generation(request: Request) -> Response:
    """POST /: build and publish the vectors bundle for one task CloudEvent; GET /health."""
    if request.url.path.rstrip("/") == "/health":
        return _json({"status": "ok"}, 200)
    if request.method != "POST":
        return _json({"error": "POST a task CloudEvent"}, 405)
    try:
        event = from_http(dict(request.headers), await request.body())
        validate(event)
        kind = effective_type(event)
        if kind != VECTOR_GENERATION:
            raise InvalidInputError(f"vector-generation takes {VECTOR_GENERATION}, not {kind}")
        report = await asyncio.to_thread(_run, event_data(event) or {})
    except ClientDisconnect:
        return _json({"error": "client disconnected"}, 400)
    except NotFoundError as exc:
        return _json({"error": str(exc)}, 422)
    except InvalidInputError as exc:
        return _json({"error": str(exc)}, 400)
    except (BackendUnavailableError, DeliveryError) as exc:
        log.warning("vector generation failed on a backend: %s", exc)
        return _json({"error": f"backend unavailable, retry: {exc}"}, 503)
    except Exception:
        log.exception("vector generation failed")
        return _json({"error": "internal error"}, 500)
    return _json(report, 200)
