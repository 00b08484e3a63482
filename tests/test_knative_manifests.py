"""Every YAML under knative/ (serving and eventing) validates against the Knative CRDs, strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from zerorec import knative_validate as kv

REPO = Path(__file__).resolve().parents[1]
KNATIVE = REPO / "knative"
CRDS = kv.default_crd_dir(REPO)

pytestmark = pytest.mark.skipif(
    not CRDS.is_dir(),
    reason=f"Knative CRDs not found at {CRDS} (set ZEROREC_SHARED_DIR to the folder holding knative-crds/)",
)

MANIFESTS = sorted(kv.iter_yaml_files([KNATIVE]))
LATENCY_CRITICAL = {"recommender", "recommender-grpc", "recall", "ranking", "reranking", "user", "item"}
EXPECTED_SERVICES = LATENCY_CRITICAL | {
    "behavior", "consumer", "worker", "model-training", "feature-engineering", "vector-generation",
    "flink-realtime",
}


@pytest.fixture(scope="module")
def validators() -> dict:
    return kv.load_crds(CRDS, strict=True)


def _services() -> dict[str, dict]:
    out = {}
    for path in (KNATIVE / "serving").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Service":
                out[doc["metadata"]["name"]] = doc
    return out


def test_crds_loaded(validators: dict) -> None:
    kinds = {k[2] for k in validators}
    assert {"Service", "KafkaSource", "PingSource", "Broker", "Trigger", "JobSink"} <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(KNATIVE)))
def test_manifest_valid(path: Path, validators: dict) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        errors, _skip = kv.validate_document(doc, validators)
        assert errors == [], f"{path.name}: {errors}"


def test_whole_tree_via_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert kv.main(["--crds", str(CRDS), str(KNATIVE)]) == 0, capsys.readouterr().out


def test_kustomization_lists_every_manifest() -> None:
    missing, dangling = kv.kustomization_coverage(KNATIVE)
    assert missing == [], f"not in knative/kustomization.yaml: {missing}"
    assert dangling == [], f"listed but absent: {dangling}"


def test_one_service_per_function() -> None:
    services = _services()
    assert set(services) == EXPECTED_SERVICES
    for name, doc in services.items():
        assert doc["metadata"]["namespace"] == "zerorec"
        tmpl = doc["spec"]["template"]
        ann = tmpl["metadata"]["annotations"]
        want_min = "1" if name in LATENCY_CRITICAL else "0"
        assert ann["autoscaling.knative.dev/min-scale"] == want_min, name
        if want_min == "0":
            assert "autoscaling.knative.dev/scale-to-zero-pod-retention-period" in ann, name
        container = tmpl["spec"]["containers"][0]
        assert container["image"].startswith("registry.local/zerorec/")
        assert tmpl["spec"]["containerConcurrency"] >= 1
        probe = container["readinessProbe"]
        assert "periodSeconds" not in probe
        if "ports" not in container:
            assert probe["httpGet"]["path"] == "/health"
        env = {e["name"]: e.get("value") for e in container["env"]}
        if name.startswith("recommender"):
            assert env["ZEROREC_RANKING_URL"].startswith("http://ranking.")
        else:
            assert env["ZEROREC_OBJECT_STORE"] == "s3"


# ---------------------------------------------------------------- negative cases

GOOD = """
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: recall, namespace: zerorec}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
        autoscaling.knative.dev/max-scale: "3"
    spec:
      containerConcurrency: 8
      containers:
        - image: registry.local/zerorec/recall:0.1.0
          resources: {requests: {cpu: 100m, memory: 256Mi}, limits: {cpu: 200m, memory: 512Mi}}
          readinessProbe: {httpGet: {path: /health}}
"""


def _errors(text: str, validators: dict) -> list[str]:
    return kv.validate_document(yaml.safe_load(text), validators)[0]


def test_good_sample_passes(validators: dict) -> None:
    assert _errors(GOOD, validators) == []


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("containerConcurrency: 8", "containerConcurrency: 8\n      containerConcurency: 8",
         "containerConcurency"),
        ("containerConcurrency: 8", "containerConcurrency: eight", "is not of type 'integer'"),
        ("readinessProbe: {httpGet: {path: /health}}", "readinesProbe: {httpGet: {path: /health}}",
         "readinesProbe"),
        ("metadata: {name: recall, namespace: zerorec}",
         "metadata:\n  name: recall\n  annotations: {autoscaling.knative.dev/min-scale: '1'}",
         "spec.template.metadata.annotations"),
        ('max-scale: "3"', 'max-scale: "3"\n        autoscaling.knative.dev/window: "2s"', "window"),
        ('max-scale: "3"', 'max-scale: "3"\n        autoscaling.knative.dev/metric: cpu', "metric"),
        ('min-scale: "1"', 'min-scale: "5"', "min-scale 5 > max-scale 3"),
        ('min-scale: "1"', "min-scale: 1", "must be a string"),
        ("{path: /health}", "{path: /health, port: 9000}", "must be absent or equal"),
        ("memory: 512Mi}", "memory: 1Gi}", "exceeds the seed budget"),
        ("name: recall,", "name: nosuchsvc,", "no seed budget"),
    ],
    ids=["typo-field", "wrong-type", "typo-probe", "annotation-on-service-metadata", "window",
         "metric", "min>max", "int-annotation", "probe-port", "over-budget", "unknown-service"],
)
def test_broken_manifest_rejected(old: str, new: str, expect: str, validators: dict) -> None:
    assert old in GOOD
    errors = _errors(GOOD.replace(old, new, 1), validators)
    assert any(expect in e for e in errors), errors


def test_broken_file_fails_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text(GOOD.replace("containers:", "containerz:"))
    assert kv.main(["--crds", str(CRDS), str(tmp_path)]) == 1
    assert "containerz" in capsys.readouterr().out


def test_unknown_field_in_kafka_source_rejected(validators: dict) -> None:
    doc = {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "KafkaSource",
        "metadata": {"name": "s", "namespace": "zerorec"},
        "spec": {"bootstrapServers": ["k:9092"], "topics": ["t"], "topic": "typo",
                 "sink": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                  "name": "consumer"}}},
    }
    errors, _ = kv.validate_document(doc, validators)
    assert any("topic" in e for e in errors), errors
    del doc["spec"]["topic"]
    assert kv.validate_document(doc, validators)[0] == []
