"""ranking: `POST /` DeepFM (ONNX) scores for a candidate batch, same order as given.

Also `GET /health` (503 until the model is loaded) and `POST /events/model-published` (reload).
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
from zerorec.online import RankingStage, default_kv, latest_probe, stage_loader
from zerorec.serving import ModelSlot, dispatch, offload, parse

_kv = default_kv(_settings)
SLOT: ModelSlot[RankingStage] = ModelSlot(
    _settings.model_name,
    stage_loader(lambda m: RankingStage(m, _kv), _settings, RANKING_PARTS, _bundle),
    _settings.model_retry_s,
    latest=latest_probe(_settings),
    poll_s=_settings.model_poll_s,
)
SLOT.load()  # cold start: before the port opens


async def _score(request: Request, stage: RankingStage) -> Response:
    return await offload(stage.score, await parse(request, RankingRequest, MAX_BATCH_BODY_BYTES))


_handle = dispatch(SLOT, {"/": _score})


@functions_framework.aio.http
async def ranking(request: Request) -> Response:
    """Entry point (routes on path)."""
    return await _handle(request)
