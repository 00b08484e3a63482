"""knative/overlays/compact: the base's objects, but recall, ranking and reranking replaced by the
one `pipeline` Service, and both BFFs pointed at it (ZEROREC_PIPELINE_URL)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

KNATIVE = Path(__file__).resolve().parents[1] / "knative"
OVERLAY = KNATIVE / "overlays" / "compact"
REPLACED = {"serving/recall.yaml", "serving/ranking.yaml", "serving/reranking.yaml"}


def test_the_overlay_lists_every_base_manifest_but_the_three_stages() -> None:
    base = yaml.safe_load((KNATIVE / "kustomization.yaml").read_text())["resources"]
    overlay = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["resources"]
    assert overlay == [f"../../{r}" for r in base if r not in REPLACED] + ["pipeline.yaml"]
    svc = yaml.safe_load((OVERLAY / "pipeline.yaml").read_text())
    env = {e["name"]: e.get("value") for e in svc["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FUNCTION_TARGET"] == "pipeline" and env["FUNCTION_SOURCE"] == "functions/pipeline/main.py"
    assert (KNATIVE.parent / env["FUNCTION_SOURCE"]).is_file()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_the_overlay_renders_the_compact_topology() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(OVERLAY)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert "pipeline" in services and not {"recall", "ranking", "reranking"} & set(services)
    for bff in ("recommender", "recommender-grpc"):
        container = services[bff]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["ZEROREC_PIPELINE_URL"] == "http://pipeline.zerorec.svc.cluster.local", bff
    assert all(d["metadata"].get("namespace") == "zerorec" for d in docs if d["kind"] != "Namespace")
    # nothing points at a Service the overlay removed
    sinks = [d["spec"]["sink"]["ref"]["name"] for d in docs if "sink" in d.get("spec", {})]
    assert sinks and not {"recall", "ranking", "reranking"} & set(sinks), sinks
