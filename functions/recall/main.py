"""recall: `POST /` multi-channel candidates, `POST /hot` the hot list (degraded path).

Also `GET /health` (503 until the model is loaded), `POST /events/model-published` (reload the
model) and `POST /events/vectors-published` (reload vector-generation's bundle: the KafkaSource
`models-to-recall` delivers its `model.published` events here). The vector channel searches the
published vectors when there are any (`zerorec.recall.published_vectors`), else the model's own.
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
from zerorec.online import RecallStage, default_kv, stage_slot
from zerorec.recall.published_vectors import VectorsFeed
from zerorec.serving import ModelSlot, dispatch, offload, parse

_kv = default_kv(_settings)
_vectors = VectorsFeed(_settings)
_vectors.load()  # none published yet: the model's own vectors serve, the slot checks again later
# Cold start: the model loads here, before the port opens.
SLOT: ModelSlot[RecallStage] = stage_slot(
    lambda m: RecallStage(_vectors.attach(m), _kv), RECALL_PARTS, _settings, _bundle
)


async def _candidates(request: Request, stage: RecallStage) -> Response:
    return await offload(stage.recall, await parse(request, RecallRequest))


async def _hot(request: Request, stage: RecallStage) -> Response:
    req = await parse(request, HotRequest)
    return await offload(stage.hot, req.n, req.category)


async def _vectors_published(request: Request, _stage: RecallStage) -> Response:
    return await _vectors.slot.on_event(request)


_handle = dispatch(SLOT, {"/": _candidates, "/hot": _hot, "/events/vectors-published": _vectors_published})


@functions_framework.aio.http
async def recall(request: Request) -> Response:
    """Entry point (routes on path)."""
    _vectors.refresh_if_due()
    return await _handle(request)
