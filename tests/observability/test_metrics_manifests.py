"""The Knative Services expose GET /metrics the way Knative and Prometheus expect: on the one port
a Knative container may declare (http1), announced by the prometheus.io pod annotations that
Knative copies from the revision template to the pods."""

from __future__ import annotations

from pathlib import Path

import yaml

SERVING = Path(__file__).resolve().parents[2] / "knative" / "serving"


def test_every_runner_function_announces_its_metrics_port() -> None:
    checked = 0
    for path in sorted(SERVING.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        tmpl = doc["spec"]["template"]
        container = tmpl["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        ann = tmpl["metadata"].get("annotations", {})
        if "FUNCTION_TARGET" not in env:  # the gRPC BFF: no HTTP port, no /metrics
            assert "prometheus.io/scrape" not in ann, path.name
            continue
        assert ann["prometheus.io/scrape"] == "true", path.name
        assert ann["prometheus.io/path"] == "/metrics", path.name
        (port,) = container["ports"]
        assert port == {"name": "http1", "containerPort": 8080}, path.name
        assert ann["prometheus.io/port"] == str(port["containerPort"]), path.name
        assert "prometheus.io/scrape" not in doc["metadata"].get("annotations", {}), "pods, not the Service"
        checked += 1
    assert checked >= 13  # every Service but the gRPC BFF (a new function gets METRICS from kn-services.sh)
