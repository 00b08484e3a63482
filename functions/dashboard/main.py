"""dashboard, HTTP: server-rendered pages over the other functions' APIs and the KV.

`GET /` overview · `GET /users/<id>` (or `/users?user_id=`) · `GET /items/<id>` (or `/items?item_id=`) ·
`GET /ctr?hours=24` the online CTR as JSON · `GET /evaluation.png` · `GET /health`.
400 for a malformed id, 404 for an unknown item or route, 405 for anything but GET/HEAD.
Run: `python -m zerorec.runner --target dashboard --source functions/dashboard/main.py --port 8095`.
Logic: zerorec.dashboard.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import functions_framework.aio
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from zerorec.ctr import read_ctr
from zerorec.dashboard import Dashboard, render, valid_id
from zerorec.errors import BackendUnavailableError
from zerorec.settings import get_settings

log = logging.getLogger("zerorec.dashboard")
_settings = get_settings()
_dashboard: Dashboard | None = None


def _instance() -> Dashboard:
    """Created on first use, inside the server's event loop (its HTTP client is bound to it)."""
    global _dashboard
    if _dashboard is None:
        _dashboard = Dashboard(_settings)
    return _dashboard


def _page(status: int, reason: str) -> HTMLResponse:
    return HTMLResponse(render("error.html", status=status, reason=reason), status_code=status)


def _hours(request: Request) -> int | None:
    raw = request.query_params.get("hours", "24")
    return int(raw) if raw.isdigit() and 1 <= int(raw) <= 192 else None


@functions_framework.aio.http
async def dashboard(request: Request) -> Response:
    """Route on path."""
    path = request.url.path.rstrip("/") or "/"
    if request.method not in ("GET", "HEAD"):
        return _page(405, "the dashboard is read-only: use GET")
    if path == "/health":
        return Response(orjson.dumps({"status": "ok"}), media_type="application/json")
    dash = _instance()
    try:
        if path == "/":
            hours = _hours(request)
            if hours is None:
                return _page(400, "hours must be an integer in 1..192")
            return HTMLResponse(render("overview.html", **await dash.overview(hours)))
        if path == "/ctr":
            hours = _hours(request)
            if hours is None:
                return Response(orjson.dumps({"error": "hours must be an integer in 1..192"}), 400)
            snap = await asyncio.to_thread(read_ctr, dash.kv, hours)
            return Response(orjson.dumps(snap.to_json()), media_type="application/json")
        if path == "/evaluation.png":
            png = Path(_settings.evaluation_dir) / "report.png"
            if not png.is_file():
                return _page(404, f"no evaluation plot in {_settings.evaluation_dir}")
            return Response(png.read_bytes(), media_type="image/png")
        for prefix, key in (("/users", "user_id"), ("/items", "item_id")):
            if path == prefix and key in request.query_params:  # the header's forms
                return RedirectResponse(f"{prefix}/{request.query_params[key].strip()}", status_code=303)
        if path.startswith("/users/"):
            user_id = path.removeprefix("/users/")
            if not valid_id(user_id):
                return _page(400, "a user id is 1..128 letters, digits or _ . : @ -")
            return HTMLResponse(render("user.html", **await dash.user_page(user_id)))
        if path.startswith("/items/"):
            item_id = path.removeprefix("/items/")
            if not valid_id(item_id, "item"):
                return _page(400, "an item id is 1..128 characters, no whitespace or control characters")
            page = await dash.item_page(item_id)
            if page is None:
                return _page(404, f"no item {item_id!r}: not in the catalogue, the model or the CTR counters")
            return HTMLResponse(render("item.html", **page))
    except BackendUnavailableError as exc:
        log.warning("kv unavailable: %s", exc)
        return _page(503, f"the key-value store is unavailable: {exc}")
    return _page(404, f"no page {path}")
