"""user: `POST /` the user's profile (real-time state from the KV over the training history).

Also `GET /health` (503 until the model is loaded), `GET /openapi.json` and
`POST /events/model-published` (reload).
Run: `python -m zerorec.runner --target user --source functions/user/main.py --port 8084`.
"""

from __future__ import annotations

from zerorec.coldstart import DATA_ONLY, prefetch
from zerorec.settings import get_settings

_settings = get_settings()
_bundle = prefetch(DATA_ONLY, _settings)  # downloads and verifies the model while the imports below run

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from zerorec.api import UserRequest
from zerorec.online import UserStage, default_kv, stage_slot
from zerorec.openapi_docs import openapi_response
from zerorec.serving import ModelSlot, dispatch, offload, parse

_kv = default_kv(_settings)
# Cold start: the model loads here, before the port opens.
SLOT: ModelSlot[UserStage] = stage_slot(lambda m: UserStage(m, _kv), DATA_ONLY, _settings, _bundle)


async def _profile(request: Request, stage: UserStage) -> Response:
    req = await parse(request, UserRequest)
    return await offload(stage.profile, req.user_id)


_handle = dispatch(SLOT, {"/": _profile})


@functions_framework.aio.http
async def user(request: Request) -> Response:
    """Entry point (routes on path)."""
    if request.url.path == "/openapi.json":  # needs no model
        return openapi_response("user", request.method)
    return await _handle(request)
