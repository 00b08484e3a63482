"""Read a function's `GET /metrics` back (prometheus-client's own text parser): what a benchmark or
a test uses to check the counters against what it sent."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(base_url: str, timeout_s: float = 5.0) -> Samples:
    """GET base_url/metrics, parsed."""
    r = httpx.get(base_url.rstrip("/") + "/metrics", timeout=timeout_s)
    r.raise_for_status()
    return parse(r.text)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def recommend_counts(before: Samples, after: Samples) -> Mapping[str, float]:
    """What the BFF's /metrics says happened between two scrapes: POST /recommend answers (any
    status), those answered 200, and the degraded answers."""
    return {
        "requests": delta(before, after, "zerorec_http_requests_total", route="/recommend"),
        "ok": delta(before, after, "zerorec_http_requests_total", route="/recommend", status="200"),
        "degraded": delta(before, after, "zerorec_recommendations_total", degraded="true"),
    }
