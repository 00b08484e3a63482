"""pipeline: `POST /` recall, ranking and reranking in one process (the compact topology);
`POST /hot` recall's hot list (the BFF's degraded path).

The same stages as the recall, ranking and reranking functions, over one loaded model, called in
process: the candidate batch never leaves numpy. The BFF uses it when ZEROREC_PIPELINE_URL is set
(knative/overlays/compact). Also `GET /health`, `GET /openapi.json`,
`POST /events/model-published` (reload) and `POST /events/vectors-published` (as recall).
Run: `python -m zerorec.runner --target pipeline --source functions/pipeline/main.py --port 8089`.
"""

from __future__ import annotations

from zerorec.coldstart import ALL_PARTS, prefetch
from zerorec.settings import get_settings

_settings = get_settings()
_bundle = prefetch(ALL_PARTS, _settings)  # downloads and verifies the model while the imports below run

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from zerorec.api import HotRequest, PipelineRequest
from zerorec.hops import pipeline_openapi
from zerorec.online import PipelineStage, default_kv, stage_slot
from zerorec.recall.published_vectors import VectorsFeed
from zerorec.serving import ModelSlot, dispatch, offload, parse

_kv = default_kv(_settings)
_vectors = VectorsFeed(_settings)  # as recall: vector-generation's published vectors, when there are any
_vectors.load()
# Cold start: the model loads here, before the port opens.
SLOT: ModelSlot[PipelineStage] = stage_slot(
    lambda m: PipelineStage(_vectors.attach(m), _kv, _settings.rerank_diversity),
    ALL_PARTS,
    _settings,
    _bundle,
)


async def _recommend(request: Request, stage: PipelineStage) -> Response:
    return await offload(stage.recommend, await parse(request, PipelineRequest))


async def _hot(request: Request, stage: PipelineStage) -> Response:
    req = await parse(request, HotRequest)
    return await offload(stage.recall.hot, req.n, req.category)


async def _vectors_published(request: Request, _stage: PipelineStage) -> Response:
    return await _vectors.slot.on_event(request)


_handle = dispatch(
    SLOT,
    {"/": _recommend, "/hot": _hot, "/events/vectors-published": _vectors_published},
    openapi=pipeline_openapi,
)


@functions_framework.aio.http
async def pipeline(request: Request) -> Response:
    """Entry point (routes on path)."""
    _vectors.refresh_if_due()
    return await _handle(request)
