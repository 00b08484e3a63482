"""A browsable API page: Swagger UI over the function's own `/openapi.json`, at `GET /docs`.

The Swagger UI files come from the `swagger-ui-bundle-v2` wheel (installed with zerorec) and are
served from this process: the page loads nothing from the internet. `with_docs(app)` wraps an
ASGI app (the runner applies it to every function); other paths go to the app unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

DOCS_PATH = "/docs"
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}
# The page's own script is a file too, so the CSP can forbid inline scripts.
_INIT_JS = (
    b"""window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});\n"""
)
_CSP = b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'"


def page(title: str) -> bytes:
    """The HTML of the docs page (assets under /docs/, the document at /openapi.json)."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title>"
        f'<link rel="stylesheet" href="{DOCS_PATH}/swagger-ui.css"></head>\n'
        '<body><div id="swagger-ui"></div>'
        f'<script src="{DOCS_PATH}/swagger-ui-bundle.js"></script>'
        f'<script src="{DOCS_PATH}/init.js"></script></body></html>\n'
    ).encode()


def assets_dir() -> Path:
    """Where the installed swagger-ui-bundle-v2 keeps Swagger UI's dist files."""
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def with_docs(app: ASGIApp, function: str) -> ASGIApp:
    """`app` plus GET /docs (the page) and /docs/<asset>."""
    html = page(f"ZeroRec {function} API")
    cache: dict[str, bytes] = {}

    async def serve(scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == DOCS_PATH or path.startswith(DOCS_PATH + "/")):
            await app(scope, receive, send)
            return
        name = path[len(DOCS_PATH) + 1 :]
        if scope["method"] not in ("GET", "HEAD"):
            status, ctype, body = 405, "application/json", b'{"error": "use GET"}'
        elif name in ("", "index.html"):
            status, ctype, body = 200, "text/html; charset=utf-8", html
        elif name == "init.js":
            status, ctype, body = 200, "text/javascript", _INIT_JS
        elif name in ASSETS:
            if name not in cache:  # read once, on the first visit: nothing at cold start
                cache[name] = (assets_dir() / name).read_bytes()
            status, ctype, body = 200, ASSETS[name], cache[name]
        else:
            status, ctype, body = 404, "application/json", b'{"error": "no such file under /docs"}'
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"content-security-policy", _CSP),
            (b"x-content-type-options", b"nosniff"),
        ]
        if status == 200 and name in ASSETS:
            headers.append((b"cache-control", b"public, max-age=86400"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return serve
