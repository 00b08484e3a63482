"""Observability of every ZeroRec function, implemented once and applied by `zerorec.runner`:
Prometheus `GET /metrics`, W3C `traceparent` propagation, structured JSON logs, and OpenTelemetry
tracing behind one setting (`ZEROREC_TRACING`, off by default).

What the library records: `metrics.record_recommendation` (the BFF's source and degraded list),
`metrics.model_loaded` / `model_refused` (ModelSlot), `metrics.cold_start` (the runner),
`consumer.ObservedApplier` (consumer outcomes and lag). What the BFF's HTTP client sends
downstream: `trace.traceparent_header_line()`.
"""

from __future__ import annotations

from typing import Any

from zerorec.observability.logs import configure_logging
from zerorec.observability.metrics import cold_start, model_loaded, model_refused, record_recommendation
from zerorec.observability.middleware import Instrumented
from zerorec.observability.trace import current_trace, outgoing_traceparent, traceparent_header_line

__all__ = [
    "Instrumented",
    "cold_start",
    "configure_logging",
    "current_trace",
    "instrument",
    "model_loaded",
    "model_refused",
    "outgoing_traceparent",
    "record_recommendation",
    "traceparent_header_line",
]


def instrument(app: Any, function: str, settings: Any) -> Instrumented:
    """`app` served with metrics, trace context, access log and tracing as `settings` say."""
    tracing = None
    if settings.tracing != "off":
        from zerorec.observability.otel import tracing as make_tracing

        tracing = make_tracing(function, settings.tracing)
    return Instrumented(
        app, function, metrics=settings.metrics_enabled, log_requests=settings.access_log, tracing=tracing
    )
