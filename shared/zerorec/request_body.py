"""A request body read with a limit, for every function's handler.

`read_limited` refuses a declared Content-Length over the limit before reading anything, and stops
reading a chunked (or lying) body as soon as it passes the limit: a client can never make a function
buffer more than `limit` bytes. Handlers answer BodyTooLarge with 413 and its reason.
"""

from __future__ import annotations

from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body is over the handler's limit (answered 413 with `reason`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reason = f"body larger than {limit} bytes"
        super().__init__(self.reason)


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body; BodyTooLarge past `limit` bytes (without reading it all). A client that
    disconnects raises starlette's ClientDisconnect, as `request.body()` does."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
