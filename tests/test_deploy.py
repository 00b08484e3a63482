"""`./local/task deploy`: its dry run renders every object it would apply, registry filled in, and
each one passes the CRD validator (strict); phases and single services select the right objects."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from zerorec import knative_validate as kv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from local import deploy  # noqa: E402

CRDS = kv.default_crd_dir(REPO)
REGISTRY = "registry.example:5000/zerorec"
VERSION = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
needs_crds = pytest.mark.skipif(
    not CRDS.is_dir(), reason=f"Knative CRDs not found at {CRDS} (set ZEROREC_SHARED_DIR)"
)


def dry_run(out: Path, **params: str) -> subprocess.CompletedProcess[str]:
    """./local/deploy.sh as `./local/task deploy ... DRY_RUN=1` runs it."""
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY", "PHASE", "SERVICE", "CONTEXT")}
    env.update(DRY_RUN="1", OUT=str(out), PYTHON=sys.executable, **params)
    script = str(REPO / "local/deploy.sh")
    return subprocess.run([script], env=env, capture_output=True, text=True, timeout=120)


def rendered(out: Path) -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted((out / "objects").glob("*.yaml"))]


def names(objs: list[dict]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objs}


def images(objs: list[dict]) -> set[str]:
    pods = [o["spec"]["template"]["spec"] for o in objs if o["kind"] in ("Service", "Job")]
    return {c["image"] for pod in pods for c in pod["containers"]}


@needs_crds
def test_dry_run_renders_every_object_valid(tmp_path: Path) -> None:
    run = dry_run(tmp_path, REGISTRY=REGISTRY)
    assert run.returncode == 0, run.stderr
    objs = rendered(tmp_path)
    _ns, source = deploy.load_objects()
    assert names(objs) == names(source) and len(objs) == len(source) >= 22  # 14 Services, Job, eventing
    # Every rendered file passes the validator on its own (strict CRD schemas + webhook rules).
    report = kv.validate_paths([tmp_path / "objects"], CRDS, strict=True)
    assert report.errors == [] and report.checked == len(objs)
    assert images(objs) == {f"{REGISTRY}/zerorec-serve:{VERSION}", f"{REGISTRY}/zerorec-jobs:{VERSION}"}
    assert all(o["metadata"]["namespace"] == "zerorec" for o in objs)
    # The plan: build, push what the objects use, apply the rendered folder.
    plan = run.stdout
    assert "./local/task images" in plan
    for img in ("zerorec-serve", "zerorec-jobs"):
        assert f"podman push localhost/{img}:{VERSION} {REGISTRY}/{img}:{VERSION}" in plan
    assert f"kubectl apply -f {tmp_path}/objects" in plan
    # Apply order: the Job first, the sources after the Services they feed.
    order = [p.name for p in sorted((tmp_path / "objects").glob("*.yaml"))]
    assert order[0].endswith("-job-zerorec-init.yaml")
    position = {name.split("-", 1)[1]: k for k, name in enumerate(order)}  # without the number
    assert position["data-service-consumer.yaml"] < position["data-kafkasource-behavior-to-consumer.yaml"]
    assert position["core-service-recall.yaml"] < position["core-kafkasource-models-to-recall.yaml"]


def test_phases_partition_the_objects(tmp_path: Path) -> None:
    _ns, source = deploy.load_objects()
    seen: set[tuple[str, str]] = set()
    by_phase = {}
    for phase in deploy.PHASES:
        chosen = names(deploy.select(source, phase))
        assert not chosen & seen, phase
        seen |= chosen
        by_phase[phase] = {n for k, n in chosen if k == "Service"}
    assert seen == names(source)
    assert by_phase == {
        "core": {"recommender", "recommender-grpc", "recall", "ranking", "reranking"},
        "data": {"user", "item", "behavior", "consumer", "worker"},
        "compute": {"model-training", "feature-engineering", "vector-generation", "flink-realtime"},
    }
    assert ("Job", "zerorec-init") in names(deploy.select(source, "core"))


def test_one_service_with_its_sources(tmp_path: Path) -> None:
    run = dry_run(tmp_path, REGISTRY=REGISTRY, SERVICE="consumer")
    assert run.returncode == 0, run.stderr
    objs = rendered(tmp_path)
    assert names(objs) == {("Service", "consumer"), ("KafkaSource", "behavior-to-consumer"),
                           ("KafkaSource", "items-to-consumer")}  # fmt: skip
    assert images(objs) == {f"{REGISTRY}/zerorec-serve:{VERSION}"}
    assert "zerorec-jobs" not in run.stdout  # only what the objects use is pushed
    # A phase run replaces the previous render: no stale files from another selection.
    assert dry_run(tmp_path, REGISTRY=REGISTRY, SERVICE="zerorec-init").returncode == 0
    assert names(rendered(tmp_path)) == {("Job", "zerorec-init")}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "REGISTRY is required"),
        ({"REGISTRY": REGISTRY, "PHASE": "cores"}, "unknown phase 'cores'"),
        ({"REGISTRY": REGISTRY, "SERVICE": "recal"}, "no service 'recal'"),
        ({"REGISTRY": REGISTRY, "PHASE": "core", "SERVICE": "recall"}, "PHASE or SERVICE, not both"),
        ({"REGISTRY": "https://registry.example"}, "give host[:port][/path]"),
    ],
    ids=["no-registry", "bad-phase", "bad-service", "phase-and-service", "registry-url"],
)
def test_bad_parameters_are_refused(tmp_path: Path, params: dict[str, str], message: str) -> None:
    run = dry_run(tmp_path, **params)
    assert run.returncode != 0 and message in run.stderr, run.stderr


@needs_crds
def test_a_broken_manifest_fails_the_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "knative"
    shutil.copytree(REPO / "knative", tree)
    recall = tree / "serving/recall.yaml"
    recall.write_text(recall.read_text().replace("containerConcurrency:", "containerConcurency:"))
    out = str(tmp_path / "out")
    rc = deploy.main(["render", "--registry", REGISTRY, "--out", out, "--knative", str(tree)])
    assert rc == 1 and "containerConcurency" in capsys.readouterr().err


def test_image_refs_follow_kustomize() -> None:
    assert deploy.image_ref("zerorec-serve:0.1.0", "reg/x/", None) == "reg/x/zerorec-serve:0.1.0"
    assert deploy.image_ref("zerorec-jobs:0.1.0", "reg", "0.2.0") == "reg/zerorec-jobs:0.2.0"
    assert deploy.image_ref("docker.io/library/busybox:1", "reg", "0.2.0") == "docker.io/library/busybox:1"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its kustomize) not found")
def test_overlay_renders_the_same_with_kustomize(tmp_path: Path) -> None:
    """The overlay deploy writes, built by kubectl's kustomize, gives the objects the render applies."""
    deploy.render(REGISTRY, tmp_path, VERSION)
    argv = ["kubectl", "kustomize", str(tmp_path / "overlay")]
    built = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    by_kustomize = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(built) if d}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in rendered(tmp_path)}
    assert by_kustomize == ours


def test_real_run_checks_the_cluster_before_building(tmp_path: Path) -> None:
    """Without DRY_RUN, deploy asks the cluster (in CONTEXT) for the namespace first, and stops with
    the fix when it is missing, before any build or push (kubectl and podman are stubs here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool, rc in (("kubectl", 1), ("podman", 0)):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >>"{log}"\nexit {rc}\n')
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "PHASE", "SERVICE")}
    env.update(REGISTRY=REGISTRY, CONTEXT="prod", OUT=str(tmp_path / "out"), PYTHON=sys.executable,
               PATH=f"{bin_dir}:{os.environ['PATH']}")  # fmt: skip
    script = str(REPO / "local/deploy.sh")
    run = subprocess.run([script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "kubectl create namespace zerorec" in run.stderr, run.stderr
    assert log.read_text().splitlines() == ["kubectl --context prod get namespace zerorec"]
