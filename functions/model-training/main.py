"""model-training, CloudEvents: the exported behavior log -> a trained, published bundle, `GET /health`.

Takes `dev.zerorec.task.train.v1` over HTTP, or the same task from the PingSource `nightly-training`
(`dev.knative.sources.ping` with the `zerorectype` extension). One training at a time: a second
request while one runs gets 409. The bundle goes to `models/<name>/<version>/` and LATEST moves; a
`dev.zerorec.model.published.v1` event then goes to `$K_SINK` and every URL in
`ZEROREC_PUBLISHED_SINKS` (comma-separated, e.g. the serving functions' /events/model-published).
It publishes only under ZEROREC_MODEL_NAME: a task naming another model is refused (400), so a task
can never replace another model's LATEST. Status codes: zerorec.task_function.
Logic: jobs/train/main.py over zerorec.pipeline.
Run: `python -m zerorec.runner --target model_training --source functions/model-training/main.py --port 8091`.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from zerorec.errors import InvalidInputError
from zerorec.settings import get_settings
from zerorec.storage import object_store
from zerorec.task_function import TaskBusyError, task_handler

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for jobs.*
from jobs.train.main import read_event_log, read_items, train_and_publish, train_events_spark

TRAIN = "dev.zerorec.task.train.v1"
_settings = get_settings()
_objects = object_store(_settings)
_busy = threading.Lock()


def _sinks() -> list[str]:
    listed = os.environ.get("ZEROREC_PUBLISHED_SINKS", "").split(",")
    return [s.strip() for s in [os.environ.get("K_SINK", ""), *listed] if s.strip()]


def _model_name(data: dict[str, Any]) -> str:
    """The bundle this task publishes: the configured model, whatever the task's data asks for."""
    name = data.get("name", _settings.model_name)
    if name != _settings.model_name:
        raise InvalidInputError(
            f"model-training publishes only {_settings.model_name!r} (ZEROREC_MODEL_NAME), not {name!r}"
        )
    return name


def _run(_kind: str, data: dict[str, Any]) -> dict[str, Any]:
    name = _model_name(data)  # before the lock and the data: a refused task costs nothing
    if not _busy.acquire(blocking=False):
        raise TaskBusyError("a training is already running")
    try:
        prefix = data.get("events_prefix", "exports/events")
        items = read_items(_objects, data["items_key"]) if data.get("items_key") else None
        if _settings.train_engine == "spark":  # ZEROREC_TRAIN_ENGINE: Spark reads the export itself
            return train_events_spark(_objects, prefix, items, name=name, sinks=_sinks())
        interactions = read_event_log(_objects, prefix)
        return train_and_publish(_objects, interactions, items, name=name, sinks=_sinks())
    finally:
        _busy.release()


_handle = task_handler("model-training", _run, accepts={TRAIN}, health=lambda: {"running": _busy.locked()})


@functions_framework.aio.http
async def model_training(request: Request) -> Response:
    """POST /: train and publish for one task CloudEvent; GET /health."""
    return await _handle(request)
