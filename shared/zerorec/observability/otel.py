"""OpenTelemetry tracing, off by default (`ZEROREC_TRACING=off`); the packages are the `otel` extra.

On (`otlp`: OTLP over HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, the SDK's own setting; `console`: spans
printed to stdout), every request becomes a SERVER span whose parent is the caller's `traceparent`,
and the hop's trace context (`zerorec.observability.trace`) takes the span's ids, so the
`traceparent` the BFF sends downstream names the BFF's span: one trace across every function.
Imported only when tracing is on: the OTel SDK costs nothing at cold start otherwise.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from zerorec.observability.trace import TraceContext

_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """Starts and ends the server span of each request (used by `Instrumented`)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("zerorec")

    def start(self, method: str, path: str, traceparent: str | None) -> tuple[Any, TraceContext]:
        parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
        span = self.tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        token = otel_context.attach(otel_trace.set_span_in_context(span))
        sc = span.get_span_context()
        parent_sc = otel_trace.get_current_span(parent).get_span_context() if parent else None
        ctx = TraceContext(
            format(sc.trace_id, "032x"),
            format(sc.span_id, "016x"),
            format(parent_sc.span_id, "016x") if parent_sc and parent_sc.is_valid else None,
            bool(sc.trace_flags.sampled),
        )
        return (span, token, method), ctx

    def end(self, handle: Any, route: str, status: int) -> None:
        """End the span `start` returned (its name becomes `METHOD route`, a bounded name)."""
        span, token, method = handle
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        otel_context.detach(token)
        span.end()


def tracing(
    function: str, exporter: str | SpanExporter, processor: type[SpanProcessor] | None = None
) -> Tracing:
    """A Tracing for `function` (the OTel service name) exporting to `exporter`: 'otlp', 'console'
    or a SpanExporter (tests: InMemorySpanExporter, with SimpleSpanProcessor as `processor`)."""
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    assert not isinstance(exporter, str)
    provider = TracerProvider(resource=Resource.create({"service.name": f"zerorec-{function}"}))
    provider.add_span_processor((processor or BatchSpanProcessor)(exporter))  # type: ignore[call-arg]
    return Tracing(provider)
