"""Run every ZeroRec function on this machine as separate processes: start | stop | status.

    .venv/bin/python local/functions.py start [--real] [--timeout 90] [--no-train]
    .venv/bin/python local/functions.py status
    .venv/bin/python local/functions.py stop

Each function is a functions-framework function served by `python -m zerorec.runner` on its port of
the port map (recall 8081, ranking 8082, reranking 8083, user 8084, item 8085, behavior 8086,
consumer 8087, worker 8088, dashboard 8095, recommender HTTP 10071), plus the recommender's gRPC
server (10072), the local KafkaSource dispatcher (behavior and items topics -> consumer) and the
PingSource emulator (-> worker). Logs and pids live under .local-infra/functions/. `start` waits
(bounded) for every `/health` to answer 200, and stops what it started if one does not.

Backends: embedded by default: models in a directory (ZEROREC_DATA_DIR, default .zerorec,
where `zerorec train` publishes), KV and bus in SQLite files there when zerorec.storage offers them (separate
processes then share them), else in-process memory (each process has its own KV and bus: clicks
do not reach the serving functions, and the dispatcher sees no events). `--real` takes Kafka, Redis
and S3 from `local/infra.sh env` (start them with `local/infra.sh start`); behavior and item admin then
take the API keys ZEROREC_BEHAVIOR_API_KEY / ZEROREC_ADMIN_API_KEY from the environment, and without
them run open on purpose (ZEROREC_ALLOW_UNAUTHENTICATED=1: every process listens on 127.0.0.1 only),
where a cluster's functions refuse to start.

When the object store holds no model yet, `start` trains and publishes one with `zerorec train`
(synthetic data) unless `--no-train`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from zerorec.runner import command as runner_command

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: `local.eventing` comes from the repo root
    sys.path.insert(0, str(ROOT))

from local.eventing.manifests import PORTS as FUNCTION_PORTS  # noqa: E402

RUN_DIR = Path(os.environ.get("ZEROREC_INFRA_DIR", ROOT / ".local-infra")) / "functions"
BIN = Path(sys.executable).parent
# ZEROREC_PORT_OFFSET shifts the whole port map (a second stack beside the first, e.g. the demo's test).
PORT_OFFSET = int(os.environ.get("ZEROREC_PORT_OFFSET", "0"))


@dataclass(frozen=True)
class Service:
    """One local process: how to start it and how to know it is ready."""

    name: str
    port: int | None
    argv: tuple[str, ...]
    health: str | None = "/health"  # HTTP path answering 200 when ready; None: TCP port or alive
    needs_folder: str | None = None  # skipped when this folder does not exist

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"


def ff(name: str, port: int, target: str | None = None) -> Service:
    """A functions-framework function under functions/<name>/main.py, served by zerorec.runner."""
    argv = runner_command(target or name, f"functions/{name}/main.py", "127.0.0.1", port)
    return Service(name, port, tuple(argv), needs_folder=f"functions/{name}")


SERVING = ("recall", "ranking", "reranking", "user", "item")
# The local port map of ARCHITECTURE.md (one copy, shared with the eventing emulator's sinks).
BASE_PORTS = {**FUNCTION_PORTS, "recommender-grpc": 10072}
PORTS = {name: port + PORT_OFFSET for name, port in BASE_PORTS.items()}


def services() -> list[Service]:
    """Everything `start` runs, in start order (those whose folder is missing are left out)."""
    py = sys.executable
    p = PORTS
    always = (*SERVING, "behavior", "consumer", "worker", "recommender", "dashboard")
    all_ = [ff(name, p[name]) for name in always]
    jobs = ("model-training", "feature-engineering", "vector-generation", "flink-realtime")  # on demand
    all_ += [ff(n, p[n], n.replace("-", "_")) for n in jobs]
    all_ += [
        Service(
            "recommender-grpc",
            p["recommender-grpc"],
            (
                py,
                "functions/recommender/grpc_server.py",
                "--host",
                "127.0.0.1",
                "--port",
                str(p["recommender-grpc"]),
            ),
            health=None,
            needs_folder="functions/recommender",
        ),
        Service(
            "kafka-source",
            None,
            (
                py,
                "-m",
                "local.eventing.kafka_source",
                "--sink",
                f"consumer=http://127.0.0.1:{p['consumer']}",
                "--sink",
                f"recall=http://127.0.0.1:{p['recall']}",
            ),
            health=None,
            needs_folder="functions/consumer",
        ),
        Service(
            "ping-source",
            None,
            (
                py,
                "-m",
                "local.eventing.ping_source",
                "--sink",
                f"worker=http://127.0.0.1:{p['worker']}",
                "--sink",
                f"feature-engineering=http://127.0.0.1:{p['feature-engineering']}",
                "--sink",
                f"model-training=http://127.0.0.1:{p['model-training']}",
                "--sink",
                f"vector-generation=http://127.0.0.1:{p['vector-generation']}",
            ),
            health=None,
            needs_folder="functions/worker",
        ),
    ]
    return [s for s in all_ if s.needs_folder is None or (ROOT / s.needs_folder).is_dir()]


# ------------------------------------------------------------------------------- environment


def infra_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ZEROREC_* variables `local/infra.sh env` prints (the real Kafka, Redis and S3); `env`:
    the script's environment (ZEROREC_INFRA_*_PORT of servers of one's own), default this one's."""
    out = subprocess.run(
        [str(ROOT / "local" / "infra.sh"), "env"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=None if env is None else dict(env),
    ).stdout
    env = {}
    for line in out.splitlines():
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if sep and key.startswith("ZEROREC_"):
            env[key] = value.strip().strip("'\"")
    return env


def _embedded_kind() -> str:
    """'sqlite' (shared by processes) when zerorec.storage offers it, else 'memory'."""
    from zerorec.settings import Settings

    try:
        Settings(kv_store="sqlite", event_bus="sqlite")  # type: ignore[arg-type]
        return "sqlite"
    except Exception:
        return "memory"


def function_env(
    real: bool = False, data_dir: Path | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment every function gets: embedded backends under data_dir, or the real ones."""
    env = dict(os.environ)
    env["ZEROREC_DATA_DIR"] = str(
        Path(data_dir or env.get("ZEROREC_DATA_DIR") or ROOT / ".zerorec").resolve()
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    # One BLAS/OpenMP thread per process: a request's numpy work is small, and idle pool threads
    # spinning against the other processes cost several times the work itself on a busy machine.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    # Functions are servers started from zero: they keep compiled bytecode (__pycache__, git-ignored)
    # as an image would, instead of recompiling zerorec on every cold start (~0.3 s).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if real:
        env.update(infra_env())
        # Loopback-only processes on a developer's machine: open unless keys are given (in a
        # cluster, behavior, item admin and user admin refuse to start without their keys).
        env.setdefault("ZEROREC_ALLOW_UNAUTHENTICATED", "1")
    else:
        kind = _embedded_kind()
        env.update(ZEROREC_OBJECT_STORE="local", ZEROREC_KV_STORE=kind, ZEROREC_EVENT_BUS=kind)
    if PORT_OFFSET:  # the BFF finds the shifted functions
        env.update({f"ZEROREC_{n.upper()}_URL": f"http://127.0.0.1:{PORTS[n]}" for n in SERVING})
        env["ZEROREC_GRPC_PORT"] = str(PORTS["recommender-grpc"])
        env["ZEROREC_RECOMMENDER_URL"] = f"http://127.0.0.1:{PORTS['recommender']}"  # for the dashboard
    env.update(extra or {})
    return env


# ------------------------------------------------------------------------------- processes


def spawn(svc: Service, env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `svc` in its own process group (so stop reaches any child it forks), output to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(svc.argv),
            cwd=ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ready(svc: Service, host: str = "127.0.0.1") -> bool:
    """One readiness probe: /health 200, or the port accepting connections (gRPC)."""
    if svc.port is None:
        return True
    if svc.health is None:
        return port_open(svc.port, host)
    try:
        return httpx.get(svc.url(host) + svc.health, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(
    procs: Mapping[Service, subprocess.Popen[bytes]], timeout_s: float, logs: Mapping[str, Path] | None = None
) -> dict[str, float]:
    """Wait until every service is ready; seconds each took. RuntimeError (with the log's tail) when
    one exits or is not ready within timeout_s."""
    start = time.monotonic()
    pending = dict(procs)
    took: dict[str, float] = {}
    while pending:
        for svc, proc in list(pending.items()):
            code = proc.poll()
            if code is not None:
                raise RuntimeError(f"{svc.name} exited with {code}{_tail((logs or {}).get(svc.name))}")
            if svc.port is None and time.monotonic() - start < 1.0:
                continue  # no port: ready once it has stayed up for a second
            if ready(svc):
                took[svc.name] = round(time.monotonic() - start, 2)
                del pending[svc]
        if pending and time.monotonic() - start > timeout_s:
            names = ", ".join(s.name for s in pending)
            first = next(iter(pending))
            raise RuntimeError(
                f"not ready after {timeout_s:.0f} s: {names}{_tail((logs or {}).get(first.name))}"
            )
        time.sleep(0.1)
    return took


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {path} ---\n" + "\n".join(text)


def terminate(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of `pid` (started by spawn), SIGKILL after grace_s."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _pid_file(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _read_pid(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


# ------------------------------------------------------------------------------- model


def ensure_model(env: Mapping[str, str], train: bool) -> str | None:
    """The version LATEST points at; trains one (`zerorec train`) when there is none and `train`."""
    code = (
        "from zerorec.bundle import latest_version; from zerorec.settings import get_settings;"
        "from zerorec.storage import object_store; s = get_settings();"
        "print(latest_version(object_store(s), s.model_name))"
    )
    probe = subprocess.run(
        [sys.executable, "-c", code], env=dict(env), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    if probe.returncode == 0:
        return probe.stdout.strip()
    if not train:
        return None
    name = env.get("ZEROREC_MODEL_NAME", "recommender")
    print(
        f"functions: no model {name!r} published yet: training one on synthetic data (zerorec train)...",
        flush=True,
    )
    subprocess.run([str(BIN / "zerorec"), "train", "--name", name], env=dict(env), cwd=ROOT, check=True)
    return ensure_model(env, train=False)


# ------------------------------------------------------------------------------- commands


def start(real: bool, timeout_s: float, train: bool, only: Iterable[str] = ()) -> int:
    """Start every service not already running, wait for health; 0 when all are ready."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    env = function_env(real)
    mode = (
        "real (Kafka, Redis, S3)"
        if real
        else f"embedded ({env['ZEROREC_KV_STORE']} KV/bus, {env['ZEROREC_DATA_DIR']})"
    )
    print(f"functions: backends {mode}")
    if real and env.get("ZEROREC_ALLOW_UNAUTHENTICATED") == "1":
        missing = [k for k in ("ZEROREC_BEHAVIOR_API_KEY", "ZEROREC_ADMIN_API_KEY") if not env.get(k)]
        if missing:
            print(
                f"functions: note: no {' / '.join(missing)}: behavior and item admin run without "
                "authentication (ZEROREC_ALLOW_UNAUTHENTICATED=1, loopback only); set the keys to need them"
            )
    if env["ZEROREC_KV_STORE"] == "memory":
        print(
            "functions: note: the in-memory KV and bus are per process: behavior events will not reach "
            "the serving functions; use --real (or a zerorec with the SQLite backends) for that"
        )
    try:
        version = ensure_model(env, train)
    except subprocess.CalledProcessError as exc:
        print(f"functions: training failed ({exc}); see the output above", file=sys.stderr)
        return 1
    print(f"functions: model {env.get('ZEROREC_MODEL_NAME', 'recommender')} version {version or '(none)'}")
    chosen = [s for s in services() if not only or s.name in only]
    procs: dict[Service, subprocess.Popen[bytes]] = {}
    logs = {s.name: RUN_DIR / f"{s.name}.log" for s in chosen}
    for svc in chosen:
        if _read_pid(svc.name):
            print(f"functions: {svc.name} already running (pid {_read_pid(svc.name)})")
            continue
        if svc.port is not None and port_open(svc.port):
            print(f"functions: port {svc.port} for {svc.name} is taken by another process", file=sys.stderr)
            _stop_all(procs)
            return 1
        proc = spawn(svc, env, logs[svc.name])
        _pid_file(svc.name).write_text(str(proc.pid))
        procs[svc] = proc
    try:
        took = wait_ready(procs, timeout_s, logs)
    except RuntimeError as exc:
        print(f"functions: {exc}", file=sys.stderr)
        _stop_all(procs)
        return 1
    for svc in chosen:
        where = svc.url() if svc.port else "(no port)"
        extra = f" ready in {took[svc.name]} s" if svc.name in took else ""
        print(f"functions: {svc.name:17s} {where:24s}{extra}  log {logs[svc.name]}")
    print(
        f"functions: try  curl -s localhost:{PORTS['recommender']}/recommend "
        "-H 'content-type: application/json' "
        '-d \'{"user_id": "u1", "n": 5}\''
    )
    return 0


def _stop_all(procs: Mapping[Service, subprocess.Popen[bytes]]) -> None:
    for svc, proc in procs.items():
        terminate(proc.pid)
        _pid_file(svc.name).unlink(missing_ok=True)


def stop() -> int:
    """Stop every service this script started (by the pids it recorded)."""
    for svc in reversed(services()):
        pid = _read_pid(svc.name)
        if pid:
            terminate(pid)
            print(f"functions: stopped {svc.name} (pid {pid})")
        _pid_file(svc.name).unlink(missing_ok=True)
    return 0


def status() -> int:
    """One line per service: running/stopped, ready or not; 0 when all run and are ready."""
    ok = True
    for svc in services():
        pid = _read_pid(svc.name)
        up = bool(pid) and ready(svc)
        ok &= up
        state = f"running (pid {pid}), {'ready' if up else 'NOT ready'}" if pid else "stopped"
        print(f"functions: {svc.name:17s} {state}" + (f" on {svc.url()}" if svc.port and pid else ""))
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--real", action="store_true", help="real Kafka/Redis/S3 (local/infra.sh env)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all /health")
    parser.add_argument("--no-train", action="store_true", help="do not train when no model is published")
    parser.add_argument("--only", action="append", default=[], help="start only this service (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "start":
        return start(args.real, args.timeout, not args.no_train, args.only)
    return stop() if args.command == "stop" else status()


if __name__ == "__main__":
    sys.exit(main())
