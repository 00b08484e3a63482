"""The Prometheus metrics of every ZeroRec function (prometheus-client, the process's default
registry), and the small functions the library calls to record what happened.

Label values are bounded: routes are the function's own paths (`RouteLabels`), stages and causes
are the BFF's fixed vocabulary, event types the consumer's handled types. Nothing is labelled by
user or item id.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # no `_created` series: half the exposition, nothing a dashboard uses

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
MAX_ROUTES = 64  # distinct route labels per process; further paths count as "other"

REQUESTS = Counter(
    "zerorec_http_requests",
    "HTTP requests answered, by route, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "zerorec_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route and status",
    ["route", "status"],
    buckets=LATENCY_BUCKETS,
)
RECOMMENDATIONS = Counter(
    "zerorec_recommendations",
    "Recommendations answered by the BFF, by source (personalized, hot, hot_cache, none) and degraded",
    ["source", "degraded"],
)
DEGRADED = Counter(
    "zerorec_degraded", "Fallbacks the BFF took (its `degraded` list), by stage and cause", ["stage", "cause"]
)
MODEL_INFO = Gauge("zerorec_model_info", "1 for the model version this process serves", ["model", "version"])
MODEL_LOAD_SECONDS = Gauge(
    "zerorec_model_load_seconds", "Fetch, verify and build time of the model version served", ["model"]
)
MODEL_LOADS = Counter("zerorec_model_loads", "Model loads, by result (loaded, refused)", ["model", "result"])
COLD_START_SECONDS = Gauge(
    "zerorec_cold_start_seconds",
    "Process start to the port opening: imports, model download and load (the function's cold start)",
    ["function"],
)
CONSUMER_EVENTS = Counter(
    "zerorec_consumer_events",
    "CloudEvents the consumer answered, by type and outcome: applied, duplicate (applied before), "
    "dead_lettered (refused: the KafkaSource dead-letters it), retry (5xx: redelivered)",
    ["type", "outcome"],
)
CONSUMER_LAG = Histogram(
    "zerorec_consumer_lag_seconds",
    "Event time (the CloudEvent `time`) to the moment the consumer applied it",
    buckets=LAG_BUCKETS,
)


# ------------------------------------------------------------------------------ routes

_templates: list[tuple[re.Pattern[str], str]] = []
_lock = threading.Lock()


def register_route_templates(*templates: str) -> None:
    """Paths with an id in them (`/items/{item_id}`) count under their template, not per id."""
    for template in templates:
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        _templates.append((re.compile(f"^{pattern}$"), template))


class RouteLabels:
    """The route label of a request: 'unmatched' for a 404 (any path a client makes up), a
    registered template, the path itself for the first `limit` paths, then 'other'."""

    def __init__(self, limit: int = MAX_ROUTES) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, path: str, status: int) -> str:
        if status == 404:
            return "unmatched"
        path = path.rstrip("/") or "/"
        if path in self._known:
            return path
        for pattern, template in _templates:
            if pattern.match(path):
                return template
        with _lock:
            if len(self._known) < self.limit:
                self._known.add(path)
                return path
        return "other"


# ------------------------------------------------------------------------------ recorders

_STAGES = {"user", "recall", "hot", "ranking", "reranking", "item"}


def record_recommendation(source: str, degraded: Iterable[str]) -> None:
    """One BFF answer: its source, and each fallback in its `degraded` list as (stage, cause)."""
    reasons = list(degraded)
    RECOMMENDATIONS.labels(source, "true" if reasons else "false").inc()
    for reason in reasons:
        stage, _, cause = reason.partition("_")
        if stage not in _STAGES:
            stage, cause = "other", reason
        DEGRADED.labels(stage, cause or "unknown").inc()


_versions: dict[str, str] = {}


def model_loaded(model: str, version: str, load_ms: float) -> None:
    """A model version now served: the info gauge moves to it, its load time is kept."""
    with _lock:
        old = _versions.get(model)
        if old is not None and old != version:
            MODEL_INFO.remove(model, old)
        _versions[model] = version
    MODEL_INFO.labels(model, version).set(1)
    MODEL_LOAD_SECONDS.labels(model).set(load_ms / 1000)
    MODEL_LOADS.labels(model, "loaded").inc()


def model_refused(model: str) -> None:
    """A load that failed (the old version, if any, keeps serving)."""
    MODEL_LOADS.labels(model, "refused").inc()


def cold_start(function: str, seconds: float) -> None:
    COLD_START_SECONDS.labels(function).set(seconds)


_EVENT_TYPES = {"dev.zerorec.behavior.v1", "dev.zerorec.item.upserted.v1", "dev.zerorec.item.deleted.v1"}


def consumed(event_type: str | None, outcome: str, lag_s: float | None = None) -> None:
    """One event answered by the consumer (outcome: applied, duplicate, dead_lettered, retry)."""
    kind = event_type if event_type in _EVENT_TYPES else "other"
    CONSUMER_EVENTS.labels(kind, outcome).inc()
    if lag_s is not None and outcome == "applied":
        CONSUMER_LAG.observe(max(lag_s, 0.0))
