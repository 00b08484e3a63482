"""Run ZeroRec's images as Knative would run them, on this machine: one podman container per function.

Each container gets what its Service in `knative/serving/<fn>.yaml` declares: the image (serve or
jobs), FUNCTION_TARGET / FUNCTION_SOURCE or the command, the CPU and memory *limits* (podman
`--cpus` / `--memory`, enforced: an over-limit process is OOM-killed), a read-only root filesystem
(writable only where the manifest mounts an emptyDir: a tmpfs of its size here), the image's
non-root user, no capabilities. Backends are
the real Kafka, Redis and S3 of `local/infra.sh env` (host network: the containers reach them on
127.0.0.1, and each listens on its own PORT). Used by tests/containers and `zerorec bench containers`.

podman runs with runc and explicit rlimits: crun fails on this host's cgroups, and raising rlimits
is not permitted here.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVING_DIR = ROOT / "knative" / "serving"
PODMAN = ("podman", "--runtime", "runc")
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
SERVE_IMAGE, JOBS_IMAGE = "zerorec-serve", "zerorec-jobs"


def available() -> str | None:
    """None when podman and runc can run containers here, else why not."""
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install podman runc)"
    return None


def image_exists(image: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", image], capture_output=True).returncode == 0


def image_mb(image: str) -> float:
    """The image's size as podman reports it (uncompressed layers), MB."""
    out = subprocess.run(
        [*PODMAN, "image", "inspect", "--format", "{{.Size}}", image],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return round(int(out.strip()) / 1e6, 1)


# ------------------------------------------------------------------------------- manifests


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ('200m', '2', '0.5') in cores."""
    q = str(quantity).strip()
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


_MEM_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ('512Mi', '1Gi', '256M') in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G|)", str(quantity).strip())
    if m is None:
        raise ValueError(f"unsupported memory quantity {quantity!r}")
    return int(float(m.group(1)) * _MEM_UNITS[m.group(2)])


@dataclass(frozen=True)
class ContainerSpec:
    """What a function's Knative Service asks of its container, as podman arguments need it."""

    name: str
    image: str
    command: tuple[str, ...]  # empty: the image's CMD (python -m zerorec.runner)
    env: dict[str, str]  # the manifest's literal env (secret refs and cluster URLs excluded)
    cpu_limit: str
    memory_limit: str
    health_path: str | None  # None: a TCP probe (gRPC)
    container_port: int | None  # a fixed port the manifest names (gRPC's h2c), else PORT
    scratch: tuple[tuple[str, str], ...] = ()  # (mount path, size) of each emptyDir: a tmpfs here

    @property
    def cpus(self) -> float:
        return cpu_cores(self.cpu_limit)

    @property
    def memory(self) -> int:
        return memory_bytes(self.memory_limit)


def _image_for(name: str, declared: str) -> str:
    """The local build of a manifest's image (zerorec-serve or zerorec-jobs, whatever the registry)."""
    base = declared.rsplit("/", 1)[-1].split(":", 1)[0]
    if base not in (SERVE_IMAGE, JOBS_IMAGE):
        raise ValueError(f"{name}: image {declared!r} is neither {SERVE_IMAGE} nor {JOBS_IMAGE}")
    return f"{base}:latest"


def spec_for(name: str, serving_dir: Path = SERVING_DIR) -> ContainerSpec:
    """The container spec of Knative Service `name` (knative/serving/<name>.yaml)."""
    return spec_from_manifest(serving_dir / f"{name}.yaml", "Service", name)


def spec_from_manifest(path: Path, kind: str, name: str) -> ContainerSpec:
    """The spec of the first container of the `kind` object (a Service or a Job) in `path`: both
    keep their pod template at spec.template.spec."""
    doc = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind)
    pod = doc["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}
    probe = c.get("readinessProbe", {})
    ports = c.get("ports") or [{}]
    empty_dirs = {
        v["name"]: v["emptyDir"].get("sizeLimit", "64Mi") for v in pod.get("volumes", []) if "emptyDir" in v
    }
    scratch = tuple(
        (m["mountPath"], empty_dirs[m["name"]]) for m in c.get("volumeMounts", []) if m["name"] in empty_dirs
    )
    return ContainerSpec(
        name=name,
        image=_image_for(name, c["image"]),
        command=tuple(c.get("command", [])) + tuple(c.get("args", [])),
        env=env,
        cpu_limit=str(c["resources"]["limits"]["cpu"]),
        memory_limit=str(c["resources"]["limits"]["memory"]),
        health_path=probe["httpGet"].get("path") if "httpGet" in probe else None,
        container_port=ports[0].get("containerPort"),
        scratch=scratch,
    )


# Manifest env that names cluster addresses: replaced by the local servers' (infra.sh env) and the
# local ports of the other containers.
_CLUSTER_ENV = re.compile(r"ZEROREC_(S3_ENDPOINT|REDIS_URL|KAFKA_BOOTSTRAP|\w+_URL)$")


# ------------------------------------------------------------------------------- containers


@dataclass
class Container:
    """One running function container."""

    name: str
    spec: ContainerSpec
    port: int
    cid: str
    started: float  # perf_counter() just before `podman run`

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inspect(self) -> dict[str, Any]:
        out = subprocess.run(
            [*PODMAN, "inspect", self.cid], capture_output=True, text=True, check=True
        ).stdout
        return json.loads(out)[0]

    def pid(self) -> int | None:
        pid = self.inspect()["State"].get("Pid") or 0
        return pid or None

    def running(self) -> bool:
        return bool(self.inspect()["State"].get("Running"))

    def exit_code(self) -> int | None:
        state = self.inspect()["State"]
        return None if state.get("Running") else state.get("ExitCode")

    def rss_mb(self) -> float | None:
        """VmRSS of the function's process (the container's PID 1), MB."""
        pid = self.pid()
        if pid is None:
            return None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return None

    def logs(self, tail: int = 40) -> str:
        out = subprocess.run([*PODMAN, "logs", "--tail", str(tail), self.cid], capture_output=True, text=True)
        return out.stdout + out.stderr

    def stop(self) -> None:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "5", self.cid], capture_output=True)


def run_container(
    spec: ContainerSpec,
    port: int,
    env: Mapping[str, str],
    *,
    limits: bool = True,
    image: str | None = None,
    extra_args: Sequence[str] = (),
) -> Container:
    """Start `spec` detached on the host network, listening on `port` (PORT, or the gRPC port flag),
    as the manifest declares it: limits, read-only root, non-root, no capabilities."""
    name = f"zerorec-{spec.name}-{uuid.uuid4().hex[:8]}"
    run_env = {**spec.env, **env, "PORT": str(port)}
    command = list(spec.command)
    if spec.container_port is not None:  # gRPC: a fixed port in the manifest; here a free one
        run_env["ZEROREC_GRPC_PORT"] = str(port)
    argv = [
        *PODMAN, "run", "-d", "--name", name, *ULIMITS, "--network", "host",
        "--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
    ]  # fmt: skip
    for path, size in spec.scratch:  # emptyDir volumes: tmpfs pages count toward the memory limit, too
        argv += ["--tmpfs", f"{path}:rw,size={memory_bytes(size)},mode=1777"]
    if limits:
        argv += ["--cpus", f"{spec.cpus:g}", "--memory", str(spec.memory), "--memory-swap", str(spec.memory)]
    for key, value in run_env.items():
        argv += ["--env", f"{key}={value}"]
    argv += [*extra_args, image or spec.image, *command]
    t0 = time.perf_counter()
    cid = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    return Container(spec.name, spec, port, cid, t0)


def backend_env(infra: Mapping[str, str], spec: ContainerSpec, urls: Mapping[str, str]) -> dict[str, str]:
    """The env a container gets here: the manifest's literals minus cluster addresses, plus the local
    servers (`infra`: local/infra.sh env) and the other containers' URLs (`urls`: ZEROREC_*_URL)."""
    env = {k: v for k, v in spec.env.items() if not _CLUSTER_ENV.match(k)}
    env.update(infra)
    env.update(urls)
    return env


def wait_health(container: Container, timeout_s: float = 60.0, tcp: bool = False) -> float | None:
    """ms from `podman run` to the first 200 on /health (or an open port for `tcp`); None on timeout
    or if the container exits."""
    import socket

    import httpx

    deadline = container.started + timeout_s
    path = container.spec.health_path or "/health"
    with httpx.Client(timeout=2.0) as client:
        for attempt in itertools.count():
            try:
                if tcp:
                    with socket.create_connection(("127.0.0.1", container.port), timeout=0.5):
                        return round((time.perf_counter() - container.started) * 1000, 1)
                elif client.get(container.url() + path).status_code == 200:
                    return round((time.perf_counter() - container.started) * 1000, 1)
            except (httpx.HTTPError, OSError):
                pass
            if time.perf_counter() > deadline or (attempt % 50 == 49 and not container.running()):
                return None
            time.sleep(0.01)
    return None
