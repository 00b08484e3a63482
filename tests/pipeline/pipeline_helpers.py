"""Helpers of the event-pipeline tests: payload builders, one in-process request to an ASGI app.

Kept out of conftest.py so test modules import them by a unique name (`from conftest import ...`
breaks when pytest collects two test folders in one run).
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for local.eventing
EMBEDDED = {
    "ZEROREC_EVENT_BUS": "memory",
    "ZEROREC_KV_STORE": "memory",
    "ZEROREC_OBJECT_STORE": "local",
}


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def click(user: str = "u1", item: str = "i1", kind: str = "click", **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "user_id": user, "item_id": item, "timestamp": now_rfc3339(), **extra}


def call(app: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request to an ASGI app, in-process."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())
