"""The images, run as Knative runs them: each function in its container at its manifest's CPU and
memory limits, read-only root, non-root, against the real Redis, Kafka and S3 of local/infra.sh."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from zerorec.bench_ingest import free_port
from zerorec.cloudevents_io import new_event, to_http_binary

from local import containers as ct

REPO = Path(__file__).resolve().parents[2]
ONLINE = ("recall", "ranking", "reranking", "user", "item")
RSS_SLACK = 0.9  # a healthy function stays under 90% of its memory limit after its first requests


def _in_image(image: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Run a command in `image` as the manifests do: read-only root, /var/tmp writable, no capabilities."""
    argv = [*ct.PODMAN, "run", "--rm", *ct.ULIMITS, "--read-only", "--read-only-tmpfs=false",
            "--tmpfs", "/var/tmp:rw,size=64m", "--cap-drop", "ALL", "--network", "none",
            image, *command]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_serve_image_has_no_training_stack_and_runs_as_non_root(images: dict[str, str]) -> None:
    probe = (
        "import importlib.util as u, os, shutil, zerorec.online, implicit.cpu.als;"
        "heavy = [m for m in ('torch', 'pyspark', 'pyflink') if u.find_spec(m)];"
        "print(os.getuid(), heavy, shutil.which('java'))"
    )
    r = _in_image(images["serve"], "python", "-c", probe)
    assert r.returncode == 0, r.stderr
    uid, rest = r.stdout.strip().split(maxsplit=1)
    assert uid != "0"
    assert rest == "[] None", f"the serve image carries the training stack: {rest}"


def test_jobs_image_trains_on_cuda_spark_and_flink(images: dict[str, str]) -> None:
    probe = (
        "import os, torch, pyspark, onnx, implicit.cpu.als, minio;"
        "print(os.getuid(), torch.__version__, torch.version.cuda, pyspark.__version__)"
    )
    r = _in_image(images["jobs"], "python", "-c", probe)
    assert r.returncode == 0, r.stderr
    uid, _torch, cuda, _spark = r.stdout.split()
    assert uid != "0"
    assert cuda not in ("None", ""), "torch without CUDA runtime libraries: the image cannot train on a GPU"
    assert _in_image(images["jobs"], "java", "-version").returncode == 0
    flink = _in_image(images["jobs"], "/opt/flink-venv/bin/python", "-c", "import pyflink, redis")
    assert flink.returncode == 0, flink.stderr
    cli = _in_image(images["jobs"], "zerorec", "--help")
    assert cli.returncode == 0 and "train" in cli.stdout, cli.stderr


class _Stack:
    """Probes' view of the running containers (name -> URL)."""

    def __init__(self, running: dict[str, ct.Container]) -> None:
        self.running = running
        self.services = running  # Probes asks which functions run (the compact topology's pipeline?)

    def url(self, name: str) -> str:
        return self.running[name].url()


def _start(
    name: str, infra: dict[str, str], extra: dict[str, str], started: list[ct.Container]
) -> ct.Container:
    spec = ct.spec_for(name)
    c = ct.run_container(spec, free_port(), ct.backend_env(infra, spec, extra))
    started.append(c)
    return c


def test_recommendation_end_to_end_across_containers_at_manifest_limits(
    images: dict[str, str], infra: dict[str, str], model_name: str, started: list[ct.Container]
) -> None:
    from zerorec.bench_serve import Probes

    env = {"ZEROREC_MODEL_NAME": model_name, "ZEROREC_ADMIN_API_KEY": uuid.uuid4().hex}  # item's admin key
    running = {name: _start(name, infra, env, started) for name in ONLINE}
    for name, c in running.items():
        assert ct.wait_health(c, timeout_s=120) is not None, f"{name} never ready:\n{c.logs()}"
    urls = {f"ZEROREC_{n.upper()}_URL": running[n].url() for n in ONLINE}
    running["recommender"] = _start("recommender", infra, {**env, **urls}, started)
    assert ct.wait_health(running["recommender"], timeout_s=60) is not None, running["recommender"].logs()

    users = httpx.post(running["user"].url() + "/", json={"user_id": "u1"}, timeout=10)
    assert users.status_code == 200, users.text
    probes = Probes.build(_Stack(running), ["u1"])  # recall's real answer feeds the others' requests
    assert probes.recall_candidates > 0
    for name in (*ONLINE, "recommender"):
        assert probes.once(_Stack(running), name, timeout_s=15), f"{name}: no 200\n{running[name].logs()}"

    r = httpx.post(running["recommender"].url() + "/recommend", json={"user_id": "u1", "n": 10}, timeout=15)
    body = r.json()
    assert r.status_code == 200 and len(body["items"]) == 10, r.text
    assert not body.get("degraded"), body.get("degraded")
    for name, c in running.items():
        rss = c.rss_mb()
        assert rss is not None and rss < RSS_SLACK * c.spec.memory / 2**20, f"{name}: RSS {rss} MB"


def test_grpc_bff_container_answers(
    images: dict[str, str], infra: dict[str, str], started: list[ct.Container]
) -> None:
    """The gRPC Service's command override on the serve image; with no stage reachable it degrades
    (hot list from nowhere: an empty answer), it does not fail."""
    sys.path.insert(0, str(REPO / "functions" / "recommender" / "proto"))
    import grpc
    import recommender_pb2 as pb
    import recommender_pb2_grpc as pb_grpc

    spec = ct.spec_for("recommender-grpc")
    dead = {f"ZEROREC_{n.upper()}_URL": f"http://127.0.0.1:{free_port()}" for n in ONLINE}
    c = ct.run_container(spec, free_port(), ct.backend_env(infra, spec, dead))
    started.append(c)
    assert ct.wait_health(c, timeout_s=60, tcp=True) is not None, c.logs()

    async def call() -> Any:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.port}") as channel:
            return await pb_grpc.RecommenderStub(channel).Recommend(
                pb.RecommendRequest(user_id="u1", n=5), timeout=10
            )

    answer = asyncio.run(call())
    assert answer.degraded, "every stage was unreachable: the answer must say it is degraded"


def test_behavior_and_consumer_containers_carry_an_event(
    images: dict[str, str], infra: dict[str, str], started: list[ct.Container]
) -> None:
    topic = f"zerorec.behavior.c{uuid.uuid4().hex[:8]}"
    key = uuid.uuid4().hex
    behavior = _start(
        "behavior", infra, {"ZEROREC_TOPIC_BEHAVIOR": topic, "ZEROREC_BEHAVIOR_API_KEY": key}, started
    )
    consumer = _start("consumer", infra, {}, started)
    worker = _start("worker", infra, {}, started)
    for c in (behavior, consumer, worker):
        assert ct.wait_health(c, timeout_s=90) is not None, f"{c.name}:\n{c.logs()}"

    user = f"cu{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event = {"kind": "click", "user_id": user, "item_id": "i1", "timestamp": now}
    refused = httpx.post(behavior.url() + "/events", json=event, timeout=10)
    assert refused.status_code == 401
    accepted = httpx.post(behavior.url() + "/events", json=event, headers={"x-api-key": key}, timeout=15)
    assert accepted.status_code == 202, accepted.text

    ce = new_event("dev.zerorec.behavior.v1", {**event, "item_id": "i2"}, source="/containers-test")
    headers, body = to_http_binary(ce)
    applied = httpx.post(consumer.url() + "/", headers=headers, content=body, timeout=15)
    assert applied.status_code == 200 and applied.json()["applied"] is True, applied.text
    again = httpx.post(consumer.url() + "/", headers=headers, content=body, timeout=15)
    assert again.status_code == 200 and again.json()["applied"] is False  # exactly once per event id


@pytest.mark.parametrize(
    "name", ["model-training", "feature-engineering", "vector-generation", "flink-realtime"]
)
def test_compute_functions_start_from_the_jobs_image(
    name: str, images: dict[str, str], infra: dict[str, str], started: list[ct.Container]
) -> None:
    c = _start(name, infra, {}, started)
    assert c.spec.image.startswith(ct.JOBS_IMAGE)
    assert ct.wait_health(c, timeout_s=120) is not None, f"{name}:\n{c.logs()}"


def test_a_cluster_comes_up_from_nothing(
    images: dict[str, str], infra: dict[str, str], started: list[ct.Container], tmp_path: Path
) -> None:
    """A new bucket: a serving container waits and says why; the init Job's container (the jobs
    image, its manifest's limits) creates the bucket and publishes a first model from an s3://
    dataset; the serving container loads it without a restart."""
    from zerorec.bench_serve import settings_from_env
    from zerorec.cluster_init import ensure_bucket
    from zerorec.data.synthetic import SyntheticConfig, generate
    from zerorec.storage.objects_s3 import S3ObjectStore

    run = uuid.uuid4().hex[:10]
    cluster = {**infra, "ZEROREC_S3_BUCKET": f"cinit-{run}", "ZEROREC_MODEL_RETRY_S": "0.5"}
    data = settings_from_env({**infra, "ZEROREC_S3_BUCKET": f"cinitds-{run}"})
    assert ensure_bucket(data) == "created"
    interactions, items = generate(SyntheticConfig(n_users=60, n_items=120, mean_interactions=12, seed=3))
    dataset = S3ObjectStore.from_settings(data, prefix="datasets/tiny")
    dataset.put("interactions.csv", interactions.to_csv(index=False).encode())
    dataset.put(
        "items.csv", items.assign(categories=items["categories"].str.join("|")).to_csv(index=False).encode()
    )

    user = _start("user", cluster, {"ZEROREC_ADMIN_API_KEY": uuid.uuid4().hex}, started)  # its admin routes
    with httpx.Client(timeout=5) as client:
        deadline = time.monotonic() + 90
        while (h := _health(client, user)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert h is not None and h.status_code == 503, user.logs()
        assert f"cinit-{run}" in h.json()["reason"], h.text

        job = ct.spec_from_manifest(REPO / "knative" / "bootstrap" / "init-job.yaml", "Job", "init")
        env = {
            **ct.backend_env(cluster, job, {}),
            "ZEROREC_INIT_DATASET": f"s3://cinitds-{run}/datasets/tiny",
        }
        init = ct.run_container(job, free_port(), env)
        started.append(init)
        deadline = time.monotonic() + 300
        while (code := init.exit_code()) is None and time.monotonic() < deadline:
            time.sleep(1)
        assert code == 0, init.logs(80)
        assert "published" in init.logs(80)

        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline and (h := _health(client, user)) is not None and h.status_code != 200
        ):
            time.sleep(0.3)
        assert h is not None and h.status_code == 200, h.text if h is not None else user.logs()


def _health(client: httpx.Client, c: ct.Container) -> httpx.Response | None:
    try:
        return client.get(c.url() + "/health")
    except httpx.HTTPError:
        return None
