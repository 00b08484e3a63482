"""W3C trace context (`traceparent`) for one request across every hop, without OpenTelemetry.

Each incoming request gets a `TraceContext`: the caller's trace id when its `traceparent` header is
valid (the hop continues the trace), else a new one (the BFF starts it). It lives in a contextvar
for the request's task, so log lines (`zerorec.observability.logs`) and outgoing calls
(`outgoing_traceparent`, which the BFF's HTTP client adds to every downstream request) carry it
without passing it around. https://www.w3.org/TR/trace-context/#traceparent-header
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """This hop's place in a trace: its own span id, the caller's span id (None at the root)."""

    trace_id: str
    span_id: str
    parent_id: str | None = None
    sampled: bool = True

    @property
    def traceparent(self) -> str:
        """The header a downstream call carries: this trace, this hop's span as the parent."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def new_span_id() -> str:
    return os.urandom(8).hex()


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:
    """(trace_id, parent span id, sampled) of a valid version-00 header, else None (start anew)."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == _ZERO_SPAN:
        return None
    return m.group(1), m.group(2), bool(int(m.group(3), 16) & 1)


def context_from(traceparent: str | None) -> TraceContext:
    """Continue the caller's trace, or start a new one."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return TraceContext(os.urandom(16).hex(), new_span_id())
    trace_id, parent, sampled = parsed
    return TraceContext(trace_id, new_span_id(), parent, sampled)


current: ContextVar[TraceContext | None] = ContextVar("zerorec_trace", default=None)


def current_trace() -> TraceContext | None:
    """The trace of the request being handled (None outside a request)."""
    return current.get()


def outgoing_traceparent() -> str | None:
    """The `traceparent` value for a downstream call made while handling a request."""
    ctx = current.get()
    return ctx.traceparent if ctx is not None else None


def traceparent_header_line() -> bytes:
    """`traceparent: ...\\r\\n` for a raw HTTP/1.1 request head, or b'' outside a request."""
    ctx = current.get()
    if ctx is None:
        return b""
    return b"traceparent: " + ctx.traceparent.encode("ascii") + b"\r\n"
