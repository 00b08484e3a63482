"""feature-engineering, CloudEvents: offline features with Spark (jobs.feature_engineering), `GET /health`.

Takes `dev.zerorec.task.feature-engineering.v1` over HTTP, or the same task from the PingSource
`feature-engineering` (`dev.knative.sources.ping` with the `zerorectype` extension). One run at a
time (Spark takes the pod's CPU): a second request while one runs gets 409. 200 with the job's
report; 400 for an invalid event; 422 when the export has nothing for the windows; 503 when a store
is unreachable. Spark: `ZEROREC_SPARK_MASTER` (default local[2]), `ZEROREC_SPARK_DRIVER_MEMORY` (512m).
Run: `python -m zerorec.runner --target feature_engineering --source functions/feature-engineering/main.py \
  --port 8092`.
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
from zerorec.settings import get_settings
from zerorec.storage import kv_store, object_store
from zerorec.task_function import TaskBusyError, task_handler

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for jobs.*
from jobs.feature_engineering.job import FEATURE_ENGINEERING, config_from_task, run_features

_settings = get_settings()
_objects, _kv = object_store(_settings), kv_store(_settings)
_busy = threading.Lock()
_SPARK = {
    "master": os.environ.get("ZEROREC_SPARK_MASTER", "local[2]"),
    "driver_memory": os.environ.get("ZEROREC_SPARK_DRIVER_MEMORY", "512m"),
}


def _run(_kind: str, data: dict[str, Any]) -> dict[str, Any]:
    if not _busy.acquire(blocking=False):
        raise TaskBusyError("a feature job is already running")
    try:
        return run_features(config_from_task(data, **_SPARK), _objects, _kv)
    finally:
        _busy.release()


_handle = task_handler(
    "feature-engineering", _run, accepts={FEATURE_ENGINEERING}, health=lambda: {"running": _busy.locked()}
)


@functions_framework.aio.http
async def feature_engineering(request: Request) -> Response:
    """POST /: run the feature job for one task CloudEvent; GET /health."""
    return await _handle(request)
