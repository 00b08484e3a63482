"""vector-generation, CloudEvents: item embeddings -> a faiss bundle (jobs.vector_generation), `GET /health`.

Takes `dev.zerorec.task.vector-generation.v1` over HTTP (or from a PingSource with `zerorectype`),
and `dev.zerorec.model.published.v1` for the recommender model (model-training's sinks: new
factors, new vectors, from that version), publishes the vectors bundle and a
`dev.zerorec.model.published.v1` event on the bus, which recall loads. It publishes
only under its own bundle name ("vectors"): a task naming another bundle (the recommender's, say)
is refused with 400, so it can never move another model's LATEST. 200 with the
report; 400 for an invalid event; 422 when the source model or export does not exist; 503 when a
store or the bus is unreachable.
Run: `python -m zerorec.runner --target vector_generation --source functions/vector-generation/main.py \
  --port 8093`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from zerorec.errors import InvalidInputError
from zerorec.settings import get_settings
from zerorec.storage import event_bus, object_store
from zerorec.task_function import task_handler

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for jobs.*
from jobs.vector_generation.job import DEFAULT_NAME, MODEL_PUBLISHED, VECTOR_GENERATION, run_vectors

_settings = get_settings()
_objects, _bus = object_store(_settings), event_bus(_settings)


def _bundle_name(data: dict[str, Any]) -> str:
    """The bundle this task publishes: always the vectors bundle, never another model's."""
    name = data.get("name", DEFAULT_NAME)
    if name != DEFAULT_NAME:
        raise InvalidInputError(
            f"vector-generation publishes only its own bundle {DEFAULT_NAME!r}, not {name!r}"
        )
    return name


def _run(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    if kind == MODEL_PUBLISHED:  # a new recommender model: its ALS factors become the vectors
        if data["name"] != _settings.model_name:
            raise InvalidInputError(
                f"vector-generation follows model {_settings.model_name!r}, not {data['name']!r}"
            )
        return run_vectors(
            _objects, _bus, source="bundle", model=data["name"], model_version=str(data["version"])
        )
    return run_vectors(
        _objects,
        _bus,
        source=data.get("source", "bundle"),
        model=data.get("model", _settings.model_name),
        events_prefix=data.get("events_prefix", "exports/events"),
        name=_bundle_name(data),
        factors=data.get("factors", 64),
    )


_handle = task_handler("vector-generation", _run, accepts={VECTOR_GENERATION, MODEL_PUBLISHED})


@functions_framework.aio.http
async def vector_generation(request: Request) -> Response:
    """POST /: build and publish the vectors bundle for one task CloudEvent; GET /health."""
    return await _handle(request)
