"""ranking: `POST /` DeepFM (ONNX) scores for a candidate batch, same order as given.

Also `GET /health` (503 until the model is loaded), `GET /openapi.json` (the contract) and
`POST /events/model-published` (reload).
Run: `python -m zerorec.runner --target ranking --source functions/ranking/main.py --port 8082`.
"""

from __future__ import annotations

from zerorec.coldstart import RANKING_PARTS, prefetch
from zerorec.settings import get_settings

_settings = get_settings()
_bundle = prefetch(RANKING_PARTS, _settings)  # downloads and verifies the model while the imports below run

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from zerorec.api import MAX_BATCH_BODY_BYTES, RankingRequest
from zerorec.hops import ranking_openapi
from zerorec.online import RankingStage, SignalsVersionError, default_kv, stage_slot
from zerorec.serving import HTTPError, ModelSlot, dispatch, offload, parse

_kv = default_kv(_settings)
# Cold start: the model loads here, before the port opens.
SLOT: ModelSlot[RankingStage] = stage_slot(lambda m: RankingStage(m, _kv), RANKING_PARTS, _settings, _bundle)


async def _score(request: Request, stage: RankingStage) -> Response:
    req = await parse(request, RankingRequest, MAX_BATCH_BODY_BYTES)
    try:
        return await offload(stage.score, req)
    except SignalsVersionError as exc:  # recall serves another model version (a rollout)
        raise HTTPError(409, str(exc)) from None


_handle = dispatch(SLOT, {"/": _score}, openapi=ranking_openapi)


@functions_framework.aio.http
async def ranking(request: Request) -> Response:
    """Entry point (routes on path)."""
    return await _handle(request)
