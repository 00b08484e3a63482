"""item: `POST /` batch metadata lookup; `POST /admin/items` catalogue upserts and deletions.

The admin endpoint produces `item.upserted.v1` / `item.deleted.v1` CloudEvents to the items topic
(zerorec.catalog); the consumer applies them to the KV, which `POST /` reads. X-API-Key when
ZEROREC_ADMIN_API_KEY is set; with a real backend and no key the function refuses to start (exit 1)
unless ZEROREC_ALLOW_UNAUTHENTICATED=1. Also `GET /health`, `GET /openapi.json`
and `POST /events/model-published` (reload).

Neither route needs a model: before the first model is published (a new cluster) the admin route
takes a catalogue, the lookup answers from the KV alone, and `/health` is 200 with status 'degraded'
and the reason, so Knative routes the catalogue import to the pod. With a model, the lookup adds the
bundle's metadata for ids the KV lacks.
Run: `python -m zerorec.runner --target item --source functions/item/main.py --port 8085`.
"""

from __future__ import annotations

from zerorec.coldstart import DATA_ONLY, prefetch
from zerorec.settings import get_settings, require_api_key

_settings = get_settings()
require_api_key(_settings, _settings.admin_api_key, "ZEROREC_ADMIN_API_KEY", "item (POST /admin/items)")
_bundle = prefetch(DATA_ONLY, _settings)  # downloads and verifies the model while the imports below run

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response
from zerorec.api import ItemRequest
from zerorec.errors import BackendUnavailableError, DeliveryError
from zerorec.ingest import check_api_key
from zerorec.online import (
    ItemAdmin,
    ItemAdminRequest,
    ItemStage,
    default_kv,
    stage_slot,
)
from zerorec.openapi_docs import openapi_response
from zerorec.serving import HTTPError, ModelSlot, dispatch, offload, parse
from zerorec.storage import event_bus

_kv = default_kv(_settings)
_admin: ItemAdmin | None = None  # the items topic's producer: built on the first admin call


def _admin_instance() -> ItemAdmin:
    """The catalogue admin, created on first use (keeps the bus client out of the cold start)."""
    global _admin
    if _admin is None:
        _admin = ItemAdmin(event_bus(_settings), _settings.topic_items)
    return _admin


# Cold start: the model loads here, before the port opens.
SLOT: ModelSlot[ItemStage] = stage_slot(lambda m: ItemStage(m, _kv), DATA_ONLY, _settings, _bundle)


_kv_only = ItemStage(None, _kv)  # the lookup before the first model: the KV alone


async def _lookup(request: Request) -> Response:
    req = await parse(request, ItemRequest)
    loaded = SLOT.current
    return await offload((loaded.value if loaded else _kv_only).lookup, req.item_ids)


async def _admin_items(request: Request) -> Response:
    if not check_api_key(_settings.admin_api_key, request.headers.get("x-api-key")):
        raise HTTPError(401, "missing or wrong X-API-Key")
    req = await parse(request, ItemAdminRequest, limit=1024 * 1024)
    try:
        response = await offload(_admin_instance().apply, req)
    except (DeliveryError, BackendUnavailableError) as exc:
        raise HTTPError(503, f"items topic unavailable: {exc}") from None
    response.status_code = 202
    return response


_handle = dispatch(SLOT, {}, {"/": _lookup, "/admin/items": _admin_items})


@functions_framework.aio.http
async def item(request: Request) -> Response:
    """Entry point (routes on path)."""
    if request.url.path == "/openapi.json":  # needs no model
        return openapi_response("item", request.method)
    return await _handle(request)
