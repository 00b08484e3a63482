"""reranking: `POST /` MMR, freshness and rules over ranked items; never a `seen` item.

Also `GET /health` (503 until the model is loaded), `GET /openapi.json` (the contract) and
`POST /events/model-published` (reload).
Run: `python -m zerorec.runner --target reranking --source functions/reranking/main.py --port 8083`.
"""

from __future__ import annotations

from zerorec.coldstart import DATA_ONLY, prefetch
from zerorec.settings import get_settings

_settings = get_settings()
_bundle = prefetch(DATA_ONLY, _settings)  # downloads and verifies the model while the imports below run

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from zerorec.api import MAX_BATCH_BODY_BYTES, RerankRequest
from zerorec.hops import reranking_openapi
from zerorec.online import RerankStage, stage_slot
from zerorec.serving import ModelSlot, dispatch, offload, parse

# Cold start: the model loads here, before the port opens.
SLOT: ModelSlot[RerankStage] = stage_slot(
    lambda m: RerankStage(m, _settings.rerank_diversity), DATA_ONLY, _settings, _bundle
)


async def _rerank(request: Request, stage: RerankStage) -> Response:
    return await offload(stage.rerank, await parse(request, RerankRequest, MAX_BATCH_BODY_BYTES))


_handle = dispatch(SLOT, {"/": _rerank}, openapi=reranking_openapi)


@functions_framework.aio.http
async def reranking(request: Request) -> Response:
    """Entry point (routes on path)."""
    return await _handle(request)
