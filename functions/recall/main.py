"""recall: `POST /` multi-channel candidates, `POST /hot` the hot list (degraded path).

Also `GET /health` (503 until the model is loaded), `GET /openapi.json` (the contract) and
`POST /events/model-published` (reload).
Run: `python -m zerorec.runner --target recall --source functions/recall/main.py --port 8081`.
"""

from __future__ import annotations

from zerorec.coldstart import RECALL_PARTS, prefetch
from zerorec.settings import get_settings

_settings = get_settings()
_bundle = prefetch(RECALL_PARTS, _settings)  # downloads and verifies the model while the imports below run

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from zerorec.api import HotRequest, RecallRequest
from zerorec.hops import recall_openapi
from zerorec.online import RecallStage, default_kv, stage_slot
from zerorec.serving import ModelSlot, dispatch, offload, parse

_kv = default_kv(_settings)
# Cold start: the model loads here, before the port opens.
SLOT: ModelSlot[RecallStage] = stage_slot(lambda m: RecallStage(m, _kv), RECALL_PARTS, _settings, _bundle)


async def _candidates(request: Request, stage: RecallStage) -> Response:
    return await offload(stage.recall, await parse(request, RecallRequest))


async def _hot(request: Request, stage: RecallStage) -> Response:
    req = await parse(request, HotRequest)
    return await offload(stage.hot, req.n, req.category)


_handle = dispatch(SLOT, {"/": _candidates, "/hot": _hot}, openapi=recall_openapi)


@functions_framework.aio.http
async def recall(request: Request) -> Response:
    """Entry point (routes on path)."""
    return await _handle(request)
