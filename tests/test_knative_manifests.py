"""Every YAML under knative/ (serving, eventing, the init Job) validates against the Knative CRDs,
strictly; the Services run the project's images as the Containerfile expects, securely; the kn
commands of knative/kn-services.sh write the same Services as the committed YAML."""

from __future__ import annotations

import ast
import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from zerorec import knative_validate as kv

REPO = Path(__file__).resolve().parents[1]
KNATIVE = REPO / "knative"
CRDS = kv.default_crd_dir(REPO)

needs_crds = pytest.mark.skipif(
    not CRDS.is_dir(),
    reason=f"Knative CRDs not found at {CRDS} (set ZEROREC_SHARED_DIR to the folder holding knative-crds/)",
)

MANIFESTS = sorted(kv.iter_yaml_files([KNATIVE]))
VERSION = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
LATENCY_CRITICAL = {"recommender", "recommender-grpc", "recall", "ranking", "reranking", "user", "item"}
JOB_FUNCTIONS = {"model-training", "feature-engineering", "vector-generation", "flink-realtime"}
ALWAYS_ON_JOBS = {"flink-realtime"}  # a streaming job: scale-to-zero would stop it
EXPECTED_SERVICES = LATENCY_CRITICAL | JOB_FUNCTIONS | {"behavior", "consumer", "worker", "dashboard"}
PUBLIC = {"recommender", "recommender-grpc", "behavior"}  # the BFF, and event intake from outside
BFF = {"recommender", "recommender-grpc"}
# The seed's deployment phases (seed/services-v2.md), as deploy's PHASE selects them.
PHASE_OF = {
    **dict.fromkeys(["recommender", "recommender-grpc", "recall", "ranking", "reranking"], "core"),
    "pipeline": "core",  # knative/overlays/compact: recall, ranking and reranking in one
    **dict.fromkeys(["user", "item", "behavior", "consumer", "worker", "dashboard"], "data"),
    **dict.fromkeys(JOB_FUNCTIONS, "compute"),
}
SECRET_KEYS = {"zerorec-s3": {"access-key", "secret-key"}, "zerorec-api-keys": {"behavior", "admin"}}
VISIBILITY = "networking.knative.dev/visibility"


def _services() -> dict[str, dict]:
    out = {}
    for path in (KNATIVE / "serving").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Service":
                out[doc["metadata"]["name"]] = doc
    return out


def _init_job() -> dict:
    docs = [d for d in yaml.safe_load_all((KNATIVE / "bootstrap" / "init-job.yaml").read_text()) if d]
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("batch/v1", "Job")]
    return docs[0]


def _pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def _env(container: dict) -> dict[str, Any]:
    """name -> value, or ("secret", name, key) for a secretKeyRef."""
    out: dict[str, Any] = {}
    for e in container.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        out[e["name"]] = ("secret", ref["name"], ref["key"]) if ref else e.get("value")
    return out


@pytest.fixture(scope="module")
def validators() -> dict:
    if not CRDS.is_dir():
        pytest.skip(f"Knative CRDs not found at {CRDS}")
    return kv.load_crds(CRDS, strict=True)


@needs_crds
def test_crds_loaded(validators: dict) -> None:
    kinds = {k[2] for k in validators}
    assert {"Service", "KafkaSource", "PingSource", "Broker", "Trigger", "JobSink"} <= kinds


@needs_crds
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(KNATIVE)))
def test_manifest_valid(path: Path, validators: dict) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        errors, _skip = kv.validate_document(doc, validators)
        assert errors == [], f"{path.name}: {errors}"


@needs_crds
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
        want_min = "1" if name in LATENCY_CRITICAL | ALWAYS_ON_JOBS else "0"
        assert ann["autoscaling.knative.dev/min-scale"] == want_min, name
        if want_min == "0":
            assert "autoscaling.knative.dev/scale-to-zero-pod-retention-period" in ann, name
        container = tmpl["spec"]["containers"][0]
        assert tmpl["spec"]["containerConcurrency"] >= 1
        probe = container["readinessProbe"]
        assert "periodSeconds" not in probe
        if "ports" not in container:
            assert probe["httpGet"]["path"] == "/health"


def test_images_and_function_targets() -> None:
    """Each Service runs the image its function is in, and names a function that exists."""
    for name, doc in _services().items():
        container = _pod(doc)["containers"][0]
        image = "zerorec-jobs" if name in JOB_FUNCTIONS else "zerorec-serve"
        assert container["image"] == f"{image}:{VERSION}", name  # short name: deploy adds the registry
        env = _env(container)
        if name == "recommender-grpc":  # same image, own entry point (no functions-framework)
            argv = container["command"] + container["args"]
            assert argv == ["python", "functions/recommender/grpc_server.py"]
            assert (REPO / "functions/recommender/grpc_server.py").is_file()
            assert "FUNCTION_TARGET" not in env
            continue
        assert "command" not in container and "args" not in container, name  # the image's runner
        source = REPO / env["FUNCTION_SOURCE"]
        assert env["FUNCTION_SOURCE"] == f"functions/{name}/main.py" and source.is_file(), name
        tree = ast.parse(source.read_text())
        decorated = {
            f.name for f in tree.body
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            and any("functions_framework" in ast.unparse(d) for d in f.decorator_list)
        }  # fmt: skip
        assert env["FUNCTION_TARGET"] in decorated, f"{name}: {env['FUNCTION_TARGET']} not in {decorated}"


def _assert_secure(pod: dict, where: str) -> None:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
        # The one writable directory: an emptyDir, and TMPDIR says where it is.
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", [])}
        tmpdir = _env(c)["TMPDIR"]
        assert "emptyDir" in mounts[tmpdir] and _env(c)["HOME"] == tmpdir, where
        assert tmpdir != "/tmp", f"{where}: Knative rejects a volume at /tmp (reserved path)"


def test_secure_by_default() -> None:
    for name, doc in _services().items():
        _assert_secure(_pod(doc), name)
    _assert_secure(_pod(_init_job()), "zerorec-init")


def test_keys_come_from_secrets() -> None:
    services = {**_services(), "zerorec-init": _init_job()}
    for name, doc in services.items():
        env = _env(_pod(doc)["containers"][0])
        assert "ZEROREC_ALLOW_UNAUTHENTICATED" not in env, name  # open endpoints are never the default
        for var, value in env.items():
            if isinstance(value, tuple):
                _, secret, key = value
                assert key in SECRET_KEYS.get(secret, set()), f"{name}: {var} from {secret}/{key}"
            else:
                assert not re.search(r"(KEY|SECRET|PASSWORD|TOKEN)$", var), f"{name}: {var} as plain text"
        if name in BFF:
            continue
        assert env["ZEROREC_S3_ACCESS_KEY"] == ("secret", "zerorec-s3", "access-key"), name
        assert env["ZEROREC_S3_SECRET_KEY"] == ("secret", "zerorec-s3", "secret-key"), name
    env = {n: _env(_pod(d)["containers"][0]) for n, d in services.items()}
    assert env["behavior"]["ZEROREC_BEHAVIOR_API_KEY"] == ("secret", "zerorec-api-keys", "behavior")
    assert env["item"]["ZEROREC_ADMIN_API_KEY"] == ("secret", "zerorec-api-keys", "admin")


def test_only_the_bff_and_behavior_are_public() -> None:
    for name, doc in _services().items():
        visibility = doc["metadata"].get("labels", {}).get(VISIBILITY)
        assert visibility == (None if name in PUBLIC else "cluster-local"), name


def test_bff_reaches_the_stages_in_cluster() -> None:
    for name in BFF:
        env = _env(_pod(_services()[name])["containers"][0])
        for stage in ("recall", "ranking", "reranking", "user", "item"):
            assert env[f"ZEROREC_{stage.upper()}_URL"] == f"http://{stage}.zerorec.svc.cluster.local"


def test_init_job() -> None:
    """The one-shot on the jobs image, with the serving functions' backends and credentials."""
    job = _init_job()
    pod = _pod(job)
    (c,) = pod["containers"]
    assert c["image"] == f"zerorec-jobs:{VERSION}" and c["command"] == ["zerorec", "init-cluster"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    assert "ttlSecondsAfterFinished" in job["spec"]  # a later deploy runs it again (idempotent)
    backend = {k: v for k, v in _env(_pod(_services()["recall"])["containers"][0]).items()
               if k.startswith(("ZEROREC_S3", "ZEROREC_OBJECT", "ZEROREC_KV", "ZEROREC_REDIS"))}  # fmt: skip
    assert backend and backend.items() <= _env(c).items()
    limits = c["resources"]["limits"]
    assert (limits["cpu"], limits["memory"]) == ("2000m", "2Gi")  # model-training's budget: it trains


def test_every_object_has_its_phase() -> None:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] == "Kustomization":
                continue
            name, phase = doc["metadata"]["name"], doc["metadata"]["labels"]["zerorec.dev/phase"]
            if doc["kind"] == "Service":
                assert phase == PHASE_OF[name], name
            elif doc["kind"] == "Job":
                assert phase == "core", name  # the core Services are not Ready before it has run
            elif "sink" in doc.get("spec", {}):  # a source: deployed with the function it feeds
                assert phase == PHASE_OF[doc["spec"]["sink"]["ref"]["name"]], name
            else:
                assert phase in {"core", "data", "compute"}, name


# ---------------------------------------------------------------- kn: one source of truth

_KN_PLACES = (os.environ.get("KN"), REPO / ".venv/bin/kn", shutil.which("kn"))
KN = next((Path(p) for p in _KN_PLACES if p and Path(p).is_file()), None)


def _normalise(doc: dict) -> dict:
    """What kn writes, minus what it adds that means nothing (or the same) to the API server."""
    doc = copy.deepcopy(doc)
    doc.pop("status", None)  # kn: `status: {}`; the server owns status
    doc["metadata"].pop("creationTimestamp", None)  # kn: `creationTimestamp: null` (metav1's zero value)
    tmpl = doc["spec"]["template"]
    tmpl["metadata"].pop("creationTimestamp", None)
    # kn stamps every create with the time (to force a new revision); no meaning for the YAML.
    tmpl["metadata"].get("annotations", {}).pop("client.knative.dev/updateTimestamp", None)
    for c in tmpl["spec"]["containers"]:
        if c.get("name") == "":  # kn: `name: ""`; Knative names an unnamed container user-container
            del c["name"]
        for probe in ("readinessProbe", "livenessProbe"):
            for handler in (c.get(probe) or {}).values():
                # kn writes the unset IntOrString as port 0 (httpGet) or "" (tcpSocket): "no port",
                # which Knative fills with the container port (k8s_validation.go validateProbe).
                if isinstance(handler, dict) and handler.get("port") in (0, ""):
                    del handler["port"]
    return doc


@pytest.fixture(scope="module")
def kn_rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if KN is None:
        pytest.skip("kn not built: ./local/bootstrap.sh builds it into .venv/bin/kn (or set KN=/path/to/kn)")
    out = tmp_path_factory.mktemp("kn")
    run = subprocess.run(
        [str(KNATIVE / "kn-services.sh"), "--target", str(out)],
        env={**os.environ, "KN": str(KN), "KUBECONFIG": str(out / "no-kubeconfig")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return out


def test_kn_commands_write_the_committed_services(kn_rendered: Path) -> None:
    """knative/kn-services.sh, run for real with --target: the same Services as knative/serving/."""
    committed = _services()
    rendered = {p.stem: yaml.safe_load(p.read_text()) for p in kn_rendered.glob("*.yaml")}
    assert set(rendered) == set(committed)
    for name, doc in rendered.items():
        assert _normalise(doc) == committed[name], f"{name}: kn-services.sh and serving/{name}.yaml differ"


def test_kn_registry_and_selection(tmp_path: Path, kn_rendered: Path) -> None:
    """--registry prefixes the images; naming Services renders only those; a wrong name is refused."""
    run = subprocess.run(
        [str(KNATIVE / "kn-services.sh"), "--registry", "reg.example:5000/zr/", "--target", str(tmp_path),
         "recall", "model-training"],
        env={**os.environ, "KN": str(KN)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in tmp_path.glob("*.yaml")}
    images = {name: _pod(doc)["containers"][0]["image"] for name, doc in docs.items()}
    assert images == {
        "recall": f"reg.example:5000/zr/zerorec-serve:{VERSION}",
        "model-training": f"reg.example:5000/zr/zerorec-jobs:{VERSION}",
    }
    argv = [str(KNATIVE / "kn-services.sh"), "--target", str(tmp_path), "recal"]
    bad = subprocess.run(argv, env={**os.environ, "KN": str(KN)}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no Service recal" in bad.stderr


def test_readme_kn_section_is_the_script() -> None:
    """knative/README.md's kn commands are the script the test above runs, not a copy of it."""
    text = (KNATIVE / "README.md").read_text()
    section = text[text.index("## Deploy with `kn`"):]
    section = section[: section.index("\n## ", 5)] if "\n## " in section[5:] else section
    commands = [ln for ln in section.splitlines() if ln.lstrip().startswith("kn service create")]
    assert commands == [], "kn service create lines belong in knative/kn-services.sh"
    assert "knative/kn-services.sh" in section


# ---------------------------------------------------------------- negative cases

PROBE = "readinessProbe: {httpGet: {path: /health}}"
MOUNT = "\n          volumeMounts: [{{name: {}, mountPath: {}}}]"  # under GOOD's container
VOLUME = "\n      volumes: [{}]"  # under GOOD's spec.template.spec
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
        - image: zerorec-serve:0.1.0
          resources: {requests: {cpu: 100m, memory: 256Mi}, limits: {cpu: 200m, memory: 512Mi}}
          readinessProbe: {httpGet: {path: /health}}
"""


def _errors(text: str, validators: dict) -> list[str]:
    return kv.validate_document(yaml.safe_load(text), validators)[0]


@needs_crds
def test_good_sample_passes(validators: dict) -> None:
    assert _errors(GOOD, validators) == []
    # kn writes the unset probe port as 0; a writable emptyDir outside the reserved paths is fine.
    scratch = MOUNT.format("s", "/var/tmp") + VOLUME.format("{name: s, emptyDir: {}}")
    assert _errors(GOOD.replace("{path: /health}", "{path: /health, port: 0}"), validators) == []
    assert _errors(GOOD.replace(PROBE, PROBE + scratch), validators) == []
    # CPU may burst to one core above a smaller budget; the request stays within it.
    assert _errors(GOOD.replace("limits: {cpu: 200m", "limits: {cpu: '1'"), validators) == []


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
        ("limits: {cpu: 200m", "limits: {cpu: 1500m", "limits.cpu 1500m exceeds the seed budget"),
        ("requests: {cpu: 100m", "requests: {cpu: 300m", "requests.cpu 300m exceeds the seed budget"),
        ("name: recall,", "name: nosuchsvc,", "no seed budget"),
        (PROBE, PROBE + MOUNT.format("s", "/tmp") + VOLUME.format("{name: s, emptyDir: {}}"),
         "reserved path"),
        (PROBE, PROBE + MOUNT.format("nope", "/data"), "has no matching volume"),
        (PROBE, PROBE + MOUNT.format("c", "/etc/c") + VOLUME.format("{name: c, configMap: {name: c}}"),
         "should be readOnly"),
        (PROBE, PROBE + "\n          env: [{name: PORT, value: '9000'}]", "reserved environment variable"),
        (PROBE, PROBE + "\n          securityContext: {privileged: true}", "allows only false"),
    ],
    ids=["typo-field", "wrong-type", "typo-probe", "annotation-on-service-metadata", "window",
         "metric", "min>max", "int-annotation", "probe-port", "over-budget", "cpu-burst-over-a-core",
         "cpu-request-over-budget", "unknown-service",
         "mount-on-tmp", "mount-without-volume", "writable-configmap", "reserved-env", "privileged"],
)
@needs_crds
def test_broken_manifest_rejected(old: str, new: str, expect: str, validators: dict) -> None:
    assert old in GOOD
    errors = _errors(GOOD.replace(old, new, 1), validators)
    assert any(expect in e for e in errors), errors


@needs_crds
def test_broken_file_fails_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text(GOOD.replace("containers:", "containerz:"))
    assert kv.main(["--crds", str(CRDS), str(tmp_path)]) == 1
    assert "containerz" in capsys.readouterr().out


@needs_crds
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


GOOD_JOB = """
apiVersion: batch/v1
kind: Job
metadata: {name: init, namespace: zerorec}
spec:
  backoffLimit: 2
  podFailurePolicy: {rules: [{action: FailJob, onExitCodes: {operator: In, values: [2]}}]}
  template:
    spec:
      restartPolicy: Never
      containers:
        - {name: init, image: zerorec-jobs:0.1.0, volumeMounts: [{name: s, mountPath: /tmp}]}
      volumes: [{name: s, emptyDir: {}}]
"""


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("restartPolicy: Never", "restartPolicy: Always", "must be Never or OnFailure"),
        ("restartPolicy: Never", "restartPolicy: OnFailure", "podFailurePolicy needs restartPolicy Never"),
        (", image: zerorec-jobs:0.1.0", "", "name and image are required"),
        ("{name: s, emptyDir: {}}", "{name: t, emptyDir: {}}", "has no matching volume"),
        ("backoffLimit: 2", "backoffLimit: -1", "non-negative integer"),
    ],
    ids=["restart-always", "failure-policy-on-failure", "no-image", "mount-without-volume", "bad-backoff"],
)
def test_job_shape_checked(old: str, new: str, expect: str) -> None:
    """No CRD for a built-in Job here: the validator skips the schema but still checks its shape."""
    errors, skip = kv.validate_document(yaml.safe_load(GOOD_JOB), {})
    assert errors == [] and "Job shape" in skip  # /tmp is fine outside Knative
    assert old in GOOD_JOB
    errors, _ = kv.validate_document(yaml.safe_load(GOOD_JOB.replace(old, new, 1)), {})
    assert any(expect in e for e in errors), errors
