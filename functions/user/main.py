"""user: `POST /` the user's profile (real-time state from the KV over the training history),
`POST /similar-users` (zerorec.platform_api: neighbours by trained item sets and real-time recent items),
and the user records (zerorec.users, Gorse's user CRUD): `POST /admin/users` (upsert labels and a
comment), `/admin/users/get`, `/admin/users/delete` (erases the record and the user's online state)
and `/admin/users/export` (JSON lines, streamed). The admin routes need no model and take X-API-Key
when ZEROREC_ADMIN_API_KEY is set; with a real backend and no key the function refuses to start
(exit 1) unless ZEROREC_ALLOW_UNAUTHENTICATED=1.

Also `GET /health` (503 until the model is loaded), `GET /openapi.json` and
`POST /events/model-published` (reload).
Run: `python -m zerorec.runner --target user --source functions/user/main.py --port 8084`.
"""

from __future__ import annotations

from zerorec.coldstart import DATA_ONLY, prefetch
from zerorec.settings import get_settings, require_api_key

_settings = get_settings()
require_api_key(_settings, _settings.admin_api_key, "ZEROREC_ADMIN_API_KEY", "user (POST /admin/users)")
_bundle = prefetch(DATA_ONLY, _settings)  # downloads and verifies the model while the imports below run

import asyncio
from collections.abc import Awaitable, Callable

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from zerorec.api import UserRequest
from zerorec.errors import BackendUnavailableError
from zerorec.ingest import check_api_key
from zerorec.online import UserStage, default_kv, stage_slot
from zerorec.openapi_docs import openapi_response
from zerorec.platform_api import JSONL, SimilarUsersRequest, jsonl_chunks, similar_users_of
from zerorec.serving import HTTPError, ModelSlot, dispatch, guard, offload, parse, route
from zerorec.users import (
    UserIdRequest,
    UsersExportRequest,
    UserUpsertRequest,
    all_users,
    erase_user,
    get_user,
    upsert_user,
)

_kv = default_kv(_settings)
# Cold start: the model loads here, before the port opens.
SLOT: ModelSlot[UserStage] = stage_slot(lambda m: UserStage(m, _kv), DATA_ONLY, _settings, _bundle)


async def _profile(request: Request, stage: UserStage) -> Response:
    req = await parse(request, UserRequest)
    return await offload(stage.profile, req.user_id)


async def _similar_users(request: Request, stage: UserStage) -> Response:
    req = await parse(request, SimilarUsersRequest)
    return await offload(similar_users_of, stage.model, stage.kv, req.user_id, req.n)


_handle = dispatch(SLOT, {"/": _profile, "/similar-users": _similar_users})


async def _upsert_user(request: Request) -> Response:
    return await offload(upsert_user, _kv, await parse(request, UserUpsertRequest))


async def _get_user(request: Request) -> Response:
    return await offload(get_user, _kv, (await parse(request, UserIdRequest)).user_id)


async def _delete_user(request: Request) -> Response:
    return await offload(erase_user, _kv, (await parse(request, UserIdRequest)).user_id)


async def _export_users(request: Request) -> Response:
    req = await parse(request, UsersExportRequest)
    rows = await asyncio.to_thread(all_users, _kv, req.limit)  # reads the index: a KV failure is a 503
    return StreamingResponse(jsonl_chunks(rows), media_type=JSONL)


# Served without a model (the records live in the KV alone), so outside the model slot's dispatch.
_ADMIN = {
    "/admin/users": _upsert_user,
    "/admin/users/get": _get_user,
    "/admin/users/delete": _delete_user,
    "/admin/users/export": _export_users,
}


async def _admin(request: Request, handler: Callable[[Request], Awaitable[Response]]) -> Response:
    if not check_api_key(_settings.admin_api_key, request.headers.get("x-api-key")):
        raise HTTPError(401, "missing or wrong X-API-Key")
    try:
        return await handler(request)
    except BackendUnavailableError as exc:
        raise HTTPError(503, f"key-value store unavailable: {exc}") from None


@functions_framework.aio.http
async def user(request: Request) -> Response:
    """Entry point (routes on path)."""
    if request.url.path == "/openapi.json":  # needs no model
        return openapi_response("user", request.method)
    admin = _ADMIN.get(route(request))
    if admin is not None:
        return await guard(lambda: _admin(request, admin))
    return await _handle(request)
