"""Fixtures for the event pipeline: handler apps on the embedded backends, payload builders."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import functions_framework
import httpx
import pytest
from zerorec import settings as settings_mod

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


@pytest.fixture
def make_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Build a function's ASGI app on the embedded backends (plus extra ZEROREC_* env)."""

    def build(name: str, **env: str) -> Any:
        for key, value in {**EMBEDDED, "ZEROREC_DATA_DIR": str(tmp_path / "data"), **env}.items():
            monkeypatch.setenv(key, value)
        settings_mod.get_settings.cache_clear()
        source = REPO / "functions" / name / "main.py"
        return functions_framework.create_app(target=name, source=str(source))

    yield build
    settings_mod.get_settings.cache_clear()


def call(app: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request to an ASGI app, in-process."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())
