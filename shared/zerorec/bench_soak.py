"""Soak: a steady mix of recommendations and behaviour events against every function, with faults.

`zerorec bench soak --minutes N [--faults [LIST]] [--json FILE]` starts Kafka, Redis and S3 of its
own (local/infra.sh with ZEROREC_INFRA_DIR and ZEROREC_INFRA_*_PORT: free ports, a folder of its
own, so restarting them as faults never touches anyone else's servers; Redis with an append-only
file, as a production Redis keeps its data across a restart), publishes a model there (`zerorec
train`, synthetic data) and starts every always-on function with the processes of local/functions.py
(recall, ranking, reranking, user, item, the BFF, behavior, consumer, worker and the KafkaSource
dispatcher, one event per request as the real KafkaSource). Then, for N minutes, at fixed rates:

- `POST /recommend` for users of the model (`--rps`), each answer counted ok / degraded / error;
- `POST /events` batches of clicks (`--events-per-s`, `--batch`), with one probe event per batch on
  a fresh user to time POST -> visible in Redis (event lag);
- the worker's PingSource tasks as the local PingSource sends them (export every minute, hot-list
  rebuild every 5 minutes), each answer timed against the 30 s delivery timeout;
- RSS of every process (functions, dispatcher, Kafka, Redis, S3) every `--sample-s`.

Counting is exact, as in `zerorec bench ingest`: every event is a click on an item of one category
of the soak's own, so the users' affinity counters for it sum to the number of applications; an
accepted (202) id is `applied` when its idempotency token is in the user's record; lost = accepted
- applied, duplicated = applications - applied. After the load the soak waits (bounded) for the
pipeline to drain.

Faults (`--faults`, all by default, or a comma list of `kill:<process>`, `redis-restart`,
`kafka-restart`, `s3-down`, `model-publish`, `corrupt-bundle`), spread evenly between the warm-up
and the last fifth of the soak: SIGKILL of each function in turn, restarted at once (what the
platform does); a Redis restart; a Kafka broker restart; S3 stopped for 30 s; a model published
(serving functions follow LATEST); a corrupt bundle published (every file's checksum broken; every
serving function must keep its version and refuse the new one), then a good one. The timeline
says, per fault, what it did to latency and errors, and how long recovery took (no manual step:
the soak only restarts what it killed, as the platform would).

Errors are what the design does not allow: a recommendation answered with anything but 200, or not
answered, while the BFF is up; an event POST answered with anything but 202 or 503 (503 is the
designed answer while the broker is down); a connection refused by a function that was not killed.
Requests to a killed BFF or behavior (connection refused or reset) are counted apart
(`target_down`): a cluster would have routed them to another pod.

`--json FILE` writes `errors`, `degraded`, `accepted`, `applied`, `lost`, `duplicated`,
`lag_p99_ms` and `rss_growth_pct` per process (growth over the soak after warm-up, or after the
process's last restart plus a settling minute), with the details. Exit 0 when lost, duplicated and
errors are all 0. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from zerorec.bench_ingest import _applications, _Probes, _tokens, free_port
from zerorec.bench_serve import Stack, _local_functions, percentile, rss_mb, settings_from_env
from zerorec.realtime import ItemRecord, item_upsert_writes

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
SERVING = ("recall", "ranking", "reranking", "user", "item")
FUNCTIONS = (*SERVING, "recommender", "behavior", "consumer", "worker")
PROCESSES = (*FUNCTIONS, "kafka-source")
INFRA = ("kafka", "redis", "s3")
DELIVERY_TIMEOUT_S = 30.0  # the local PingSource's
SETTLE_S = 60.0  # RSS after a (re)start is measured from this long after it
MODEL_POLL_S = 5  # the serving functions check LATEST this often during a soak
ALL_FAULTS = (
    *(f"kill:{p}" for p in PROCESSES),
    "redis-restart",
    "kafka-restart",
    "s3-down",
    "model-publish",
    "corrupt-bundle",
)


# ------------------------------------------------------------------------------- own servers


@dataclass
class Infra:
    """Kafka, Redis and S3 of this soak alone: local/infra.sh with its own folder and ports."""

    root: Path
    ports: dict[str, int]

    @classmethod
    def create(cls, root: Path) -> Infra:
        ports = {name: free_port() for name in ("kafka", "controller", "redis", "s3")}
        return cls(root, ports)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROREC_")}
        wrapper = self.root / "redis-server-aof"
        if not wrapper.exists():  # a Redis that keeps its data across a restart (as in production)
            self.root.mkdir(parents=True, exist_ok=True)
            wrapper.write_text('#!/bin/sh\nexec redis-server "$@" --appendonly yes --appendfsync everysec\n')
            wrapper.chmod(0o755)
        env.update(
            ZEROREC_INFRA_DIR=str(self.root),
            ZEROREC_INFRA_KAFKA_PORT=str(self.ports["kafka"]),
            ZEROREC_INFRA_CONTROLLER_PORT=str(self.ports["controller"]),
            ZEROREC_INFRA_REDIS_PORT=str(self.ports["redis"]),
            ZEROREC_INFRA_S3_PORT=str(self.ports["s3"]),
            ZEROREC_INFRA_REDIS_SERVER=str(wrapper),
            ZEROREC_INFRA_START_TIMEOUT="180",
        )
        return env

    def run(self, *args: str, timeout_s: float = 300.0) -> str:
        """local/infra.sh ARGS for these servers; RuntimeError with its output when it fails."""
        done = subprocess.run(
            [str(REPO / "local" / "infra.sh"), *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=REPO,
        )
        if done.returncode != 0:
            raise RuntimeError(f"local/infra.sh {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def backend_env(self) -> dict[str, str]:
        """The ZEROREC_* lines of `local/infra.sh env` for these servers."""
        return _local_functions().infra_env(self._env())

    def pids(self) -> dict[str, int]:
        out = {}
        for name in INFRA:
            with contextlib.suppress(OSError, ValueError):
                out[name] = int((self.root / name / "pid").read_text().strip())
        return out


# ------------------------------------------------------------------------------- the stack


def make_soak_stack(env_extra: Mapping[str, str], log_dir: Path, data_dir: Path) -> Stack:
    """Every always-on function and the KafkaSource dispatcher, on free ports, real backends."""
    lf = _local_functions()
    ports = {name: free_port() for name in FUNCTIONS}
    urls = {f"ZEROREC_{n.upper()}_URL": f"http://{HOST}:{ports[n]}" for n in SERVING}
    extra = {
        **env_extra,
        **urls,
        "ZEROREC_ALLOW_UNAUTHENTICATED": "1",  # loopback processes of a benchmark: no API keys
        "ZEROREC_MODEL_POLL_S": str(MODEL_POLL_S),
    }
    env = lf.function_env(False, data_dir=data_dir, extra=extra)
    stack = Stack(lf, env, log_dir)
    for name in FUNCTIONS:
        stack.services[name] = lf.ff(name, ports[name])
    argv = (
        sys.executable,
        "-m",
        "local.eventing.kafka_source",
        "--sink",
        f"consumer=http://{HOST}:{ports['consumer']}/",
    )
    # One event per request, in order per partition, partitions in parallel (the real KafkaSource
    # has one delivery in flight per partition: 12 for the behavior topic).
    single = ("--delivery", "single", "--max-parallel", "16")
    stack.services["kafka-source"] = lf.Service("kafka-source", None, (*argv, *single), health=None)
    return stack


def kill_and_restart(stack: Stack, name: str, timeout_s: float = 120.0) -> float:
    """SIGKILL `name`'s process group, start it again; seconds until it is ready."""
    proc = stack.procs.pop(name)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    t0 = time.monotonic()
    stack.start([name], timeout_s)
    return time.monotonic() - t0


# ------------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One request: when it was sent (s since start), its latency and its outcome."""

    t: float
    ms: float
    outcome: str  # ok, degraded, error, target_down (recommendations); accepted, unavailable, ...


@dataclass
class Fault:
    """One fault of the timeline."""

    name: str
    start: float
    end: float = 0.0  # when the fault action completed (the process is ready again, the server back)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Soak:
    """The running soak's shared state (load threads, sampler, fault runner)."""

    stack: Stack
    infra: Infra
    started: float = field(default_factory=time.monotonic)
    recs: list[Sample] = field(default_factory=list)
    posts: list[Sample] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    rss: list[tuple[float, str, int, float]] = field(default_factory=list)  # t, process, pid, MB
    faults: list[Fault] = field(default_factory=list)
    down: set[str] = field(default_factory=set)  # processes killed and not ready yet
    accepted_ids: list[tuple[str, str]] = field(default_factory=list)
    probe_users: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def now(self) -> float:
        return time.monotonic() - self.started


async def _rate_loop(
    soak: Soak, rate: float, one: Callable[[httpx.AsyncClient], Any], max_inflight: int = 64
) -> None:
    """Call `one(client)` `rate` times a second (open loop: a slow answer does not slow the rate)."""
    interval = 1.0 / rate
    inflight: set[asyncio.Task[Any]] = set()
    limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=16)
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        nxt = time.monotonic()
        while not soak.stop.is_set():
            if len(inflight) < max_inflight:
                task = asyncio.create_task(one(client))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        if inflight:
            await asyncio.wait(inflight, timeout=15)


def _down_outcome(soak: Soak, target: str, exc: Exception) -> str:
    """A request that got no answer: `target_down` when its target was killed by a fault (refused,
    or reset by the kill), else an error."""
    return "target_down" if target in soak.down else "error"


def recommend_load(soak: Soak, users: Sequence[str], rps: float, timeout_s: float) -> None:
    url = soak.stack.url("recommender") + "/recommend"
    rng = random.Random(1)

    async def one(client: httpx.AsyncClient) -> None:
        t = soak.now()
        t0 = time.perf_counter()
        try:
            r = await client.post(url, json={"user_id": rng.choice(users), "n": 20}, timeout=timeout_s)
            outcome = "error"
            if r.status_code == 200:
                outcome = "degraded" if r.json().get("degraded") else "ok"
        except httpx.HTTPError as exc:
            outcome = _down_outcome(soak, "recommender", exc)
        with soak.lock:
            soak.recs.append(Sample(t, (time.perf_counter() - t0) * 1000, outcome))

    asyncio.run(_rate_loop(soak, rps, one))


def event_load(
    soak: Soak,
    probes: _Probes,
    users: Sequence[str],
    items: Sequence[str],
    run: str,
    posts_per_s: float,
    batch: int,
) -> None:
    url = soak.stack.url("behavior") + "/events"
    rng = random.Random(2)

    async def one(client: httpx.AsyncClient) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = [
            {"kind": "click", "user_id": rng.choice(users), "item_id": rng.choice(items), "timestamp": stamp}
            for _ in range(batch - 1)
        ]
        probe = f"s{run}p{uuid.uuid4().hex[:10]}"
        body.append({"kind": "click", "user_id": probe, "item_id": rng.choice(items), "timestamp": stamp})
        t = soak.now()
        t0 = time.perf_counter()
        sent = time.monotonic()
        try:
            r = await client.post(url, json=body, timeout=15.0)
        except httpx.HTTPError as exc:
            outcome = _down_outcome(soak, "behavior", exc)
        else:
            if r.status_code == 202:
                doc = r.json()
                outcome = "accepted" if not doc.get("rejected") else "error"
                with soak.lock:
                    soak.accepted_ids.extend(
                        (e["user_id"], i) for e, i in zip(body, doc["ids"], strict=True) if i is not None
                    )
                    soak.probe_users.append(probe)
                if doc["ids"][-1] is not None:
                    probes.add(probe, sent)
            elif r.status_code == 503:
                outcome = "unavailable"  # the designed answer while the broker is down
            else:
                outcome = "error"
        with soak.lock:
            soak.posts.append(Sample(t, (time.perf_counter() - t0) * 1000, outcome))

    asyncio.run(_rate_loop(soak, posts_per_s, one))


def worker_tasks(soak: Soak, schedule: Mapping[str, float]) -> None:
    """Fire the worker's PingSources (local/eventing/ping_source) every `schedule[name]` seconds."""
    from local.eventing.ping_source import PingDispatcher, load

    schedule = {name: every for name, every in schedule.items() if every > 0}  # 0: not fired
    specs = [s for s in load(sink_overrides={"worker": soak.stack.url("worker") + "/"}) if s.name in schedule]
    pinger = PingDispatcher(specs, timeout_s=DELIVERY_TIMEOUT_S)
    due = {name: soak.now() + every for name, every in schedule.items()}
    while due and not soak.stop.is_set():
        name = min(due, key=lambda n: due[n])
        if soak.stop.wait(max(0.0, due[name] - soak.now())):
            break
        t = soak.now()
        t0 = time.perf_counter()
        code = pinger.fire(name)
        with soak.lock:
            soak.tasks.append(
                {
                    "task": name,
                    "t": round(t, 1),
                    "status": code,
                    "ms": round((time.perf_counter() - t0) * 1000),
                }
            )
        due[name] = soak.now() + schedule[name]


def sample_rss(soak: Soak, every_s: float) -> None:
    while not soak.stop.is_set():
        pids = {name: p.pid for name, p in list(soak.stack.procs.items())}
        pids.update(soak.infra.pids())
        t = soak.now()
        for name, pid in pids.items():
            mb = rss_mb(pid)
            if mb is not None:
                with soak.lock:
                    soak.rss.append((t, name, pid, mb))
        soak.stop.wait(every_s)


# ------------------------------------------------------------------------------- faults


class Faults:
    """The fault actions; each returns a detail dict for the timeline."""

    def __init__(self, soak: Soak, store: Any, model_name: str) -> None:
        self.soak = soak
        self.store = store
        self.model_name = model_name
        self.good: str | None = None  # the last good version published (copies start from it)

    def run(self, name: str) -> dict[str, Any]:
        kind, _, arg = name.partition(":")
        if kind == "kill":
            return self.kill(arg)
        return getattr(self, kind.replace("-", "_"))()

    def kill(self, process: str) -> dict[str, Any]:
        self.soak.down.add(process)
        try:
            took = kill_and_restart(self.soak.stack, process)
        finally:
            self.soak.down.discard(process)
        return {"ready_again_s": round(took, 2)}

    def _restart(self, server: str, pause_s: float = 0.0) -> dict[str, Any]:
        t0 = time.monotonic()
        self.soak.infra.run("stop", server)
        stopped = time.monotonic() - t0
        if pause_s:
            time.sleep(pause_s)
        self.soak.infra.run("start", server)
        return {"stop_s": round(stopped, 2), "down_s": round(time.monotonic() - t0, 2)}

    def redis_restart(self) -> dict[str, Any]:
        return self._restart("redis")

    def kafka_restart(self) -> dict[str, Any]:
        return self._restart("kafka")

    def s3_down(self) -> dict[str, Any]:
        return self._restart("s3", pause_s=30.0)

    def _versions(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SERVING:
            try:
                doc = httpx.get(self.soak.stack.url(name) + "/health", timeout=5).json()
                out[name] = {"version": doc.get("model_version"), "last_error": doc.get("last_error")}
            except (httpx.HTTPError, ValueError) as exc:
                out[name] = {"version": None, "last_error": repr(exc)}
        return out

    def _publish_copy(self, corrupt: bool) -> str:
        """A new version of the last good bundle (same files); `corrupt`: every file damaged after
        the manifest recorded its checksum, as a bad upload would leave it."""
        from zerorec.bundle import LATEST, MANIFEST, latest_version, publish_bundle

        if self.good is None:
            self.good = latest_version(self.store, self.model_name)
        prefix = f"models/{self.model_name}/{self.good}/"
        manifest = json.loads(self.store.get(prefix + MANIFEST))
        files = {path: self.store.get(prefix + path) for path in manifest["files"]}
        version = publish_bundle(
            self.store,
            self.model_name,
            files,
            params=manifest.get("params"),
            metrics=manifest.get("metrics"),
            data_window=manifest.get("data_window"),
            set_latest=False,
        )
        if corrupt:
            for path, data in files.items():
                broken = bytearray(data)
                broken[len(broken) // 2] ^= 0xFF
                self.store.put(f"models/{self.model_name}/{version}/{path}", bytes(broken))
        self.store.put(f"models/{self.model_name}/{LATEST}", version.encode())
        if not corrupt:
            self.good = version
        return version

    def _wait_versions(self, want: str, timeout_s: float) -> tuple[float | None, dict[str, Any]]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            got = self._versions()
            if all(v["version"] == want for v in got.values()):
                return time.monotonic() - t0, got
            time.sleep(0.5)
        return None, self._versions()

    def model_publish(self) -> dict[str, Any]:
        version = self._publish_copy(corrupt=False)
        took, got = self._wait_versions(version, 20 * MODEL_POLL_S)
        return {
            "version": version,
            "all_serving_s": None if took is None else round(took, 1),
            "followed": sorted(n for n, v in got.items() if v["version"] == version),
        }

    def corrupt_bundle(self) -> dict[str, Any]:
        before = {n: v["version"] for n, v in self._versions().items()}
        bad = self._publish_copy(corrupt=True)
        time.sleep(3 * MODEL_POLL_S + 5)  # every function has tried LATEST at least twice
        after = self._versions()
        refused = sorted(
            n for n, v in after.items() if v["version"] == before[n] and bad in (v["last_error"] or "")
        )
        loaded = sorted(n for n, v in after.items() if v["version"] == bad)
        good = self._publish_copy(corrupt=False)  # the fix: a good bundle on top (from the good one)
        took, _ = self._wait_versions(good, 20 * MODEL_POLL_S)
        return {
            "corrupt_version": bad,
            "refused_by": refused,
            "loaded_corrupt": loaded,
            "kept_serving": sorted(n for n, v in after.items() if v["version"] == before[n]),
            "good_version": good,
            "good_all_serving_s": None if took is None else round(took, 1),
        }


def fault_plan(names: Sequence[str], minutes: float, warmup_s: float) -> list[tuple[float, str]]:
    """(start second, fault) spread evenly from the end of warm-up to 80% of the soak."""
    if not names:
        return []
    end = minutes * 60 * 0.8
    step = max((end - warmup_s) / len(names), 1.0)
    return [(warmup_s + i * step, name) for i, name in enumerate(names)]


def parse_faults(spec: str | None) -> list[str]:
    if not spec:
        return []
    if spec == "all":
        return list(ALL_FAULTS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ALL_FAULTS]
    if unknown:
        raise SystemExit(f"unknown fault(s) {', '.join(unknown)}; choose from: {', '.join(ALL_FAULTS)}")
    return names


def run_faults(
    soak: Soak, faults: Faults, plan: Sequence[tuple[float, str]], log: Callable[[str], None]
) -> None:
    for at, name in plan:
        if soak.stop.wait(max(0.0, at - soak.now())):
            return
        fault = Fault(name, soak.now())
        log(f"soak: {fault.start:7.1f}s fault {name} ...")
        try:
            fault.detail = faults.run(name)
        except Exception as exc:  # a fault that could not be applied is reported, the soak goes on
            fault.detail = {"failed": f"{type(exc).__name__}: {exc}"}
        fault.end = soak.now()
        with soak.lock:
            soak.faults.append(fault)
        log(f"soak: {fault.end:7.1f}s fault {name} done: {json.dumps(fault.detail)}")


# ------------------------------------------------------------------------------- figures


def _window(samples: Sequence[Sample], lo: float, hi: float) -> list[Sample]:
    return [s for s in samples if lo <= s.t < hi]


def _stats(samples: Sequence[Sample]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.outcome] = counts.get(s.outcome, 0) + 1
    answered = [s.ms for s in samples if s.outcome in ("ok", "degraded", "accepted", "unavailable")]
    return {
        "requests": len(samples),
        **counts,
        "p50_ms": round(percentile(answered, 50), 1) if answered else None,
        "p99_ms": round(percentile(answered, 99), 1) if answered else None,
    }


def recovered_at(soak: Soak, fault: Fault, quiet_s: float = 5.0) -> float | None:
    """The first moment from the fault's end after which `quiet_s` of recommendations are all
    non-degraded 200s and every event POST is accepted."""
    t = fault.end
    horizon = soak.now()
    while t + quiet_s <= horizon:
        recs = _window(soak.recs, t, t + quiet_s)
        posts = _window(soak.posts, t, t + quiet_s)
        if recs and all(s.outcome == "ok" for s in recs) and all(s.outcome == "accepted" for s in posts):
            return t
        t += 0.5
    return None


def _lags(soak: Soak, probes: _Probes, lo: float, hi: float) -> list[float]:
    """Lags (ms) of the probe events sent between lo and hi (s since the start)."""
    return sorted(
        ms for sent, ms in zip(probes.sent_at, probes.lags_ms, strict=True) if lo <= sent - soak.started < hi
    )


def _p(values: Sequence[float], q: float) -> float | None:
    return round(percentile(values, q), 1) if values else None


def timeline(soak: Soak, probes: _Probes) -> list[dict[str, Any]]:
    out = []
    for f in soak.faults:
        rec_at = recovered_at(soak, f)
        hi = (rec_at if rec_at is not None else soak.now()) + 1.0
        lags = _lags(soak, probes, f.start, hi)
        out.append(
            {
                "fault": f.name,
                "start_s": round(f.start, 1),
                "action_done_s": round(f.end, 1),
                "recovered_s": None if rec_at is None else round(rec_at - f.start, 1),
                "recommendations": _stats(_window(soak.recs, f.start, hi)),
                "events": _stats(_window(soak.posts, f.start, hi)),
                "lag_p99_ms": _p(lags, 99),
                "lag_max_ms": lags[-1] if lags else None,
                **f.detail,
            }
        )
    return out


def per_minute(soak: Soak, probes: _Probes) -> list[dict[str, Any]]:
    """Each minute: recommendation p50/p99, errors, degraded, event lag p50/p99."""
    out = []
    for m in range(int(soak.now() // 60) + 1):
        lo, hi = m * 60.0, (m + 1) * 60.0
        recs = _stats(_window(soak.recs, lo, hi))
        lags = _lags(soak, probes, lo, hi)
        out.append(
            {
                "minute": m,
                "rec_p50_ms": recs["p50_ms"],
                "rec_p99_ms": recs["p99_ms"],
                "rec_degraded": recs.get("degraded", 0),
                "errors": recs.get("error", 0) + _stats(_window(soak.posts, lo, hi)).get("error", 0),
                "lag_p50_ms": _p(lags, 50),
                "lag_p99_ms": _p(lags, 99),
            }
        )
    return out


def in_fault(t: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(lo <= t < hi for lo, hi in windows)


def rss_figures(soak: Soak, warmup_s: float) -> dict[str, dict[str, Any]]:
    """Per process: growth % and slope (MB/h) over its last run, from warm-up (or its last restart
    plus SETTLE_S) to the end; the first and last tenth's medians are compared."""
    out: dict[str, dict[str, Any]] = {}
    by_name: dict[str, list[tuple[float, int, float]]] = {}
    for t, name, pid, mb in soak.rss:
        by_name.setdefault(name, []).append((t, pid, mb))
    for name, rows in by_name.items():
        last_pid = rows[-1][1]
        first_t = min(t for t, pid, _ in rows if pid == last_pid)
        restarted = first_t > rows[0][0]
        lo = max(warmup_s, first_t + SETTLE_S) if restarted else warmup_s
        seg = [(t, mb) for t, pid, mb in rows if pid == last_pid and t >= lo]
        fig: dict[str, Any] = {
            "peak_mb": max(mb for _, _, mb in rows),
            "last_mb": rows[-1][2],
            "restarted": restarted,
        }
        if len(seg) >= 6 and seg[-1][0] - seg[0][0] >= 60:
            k = max(1, len(seg) // 10)
            first = percentile([mb for _, mb in seg[:k]], 50)
            last = percentile([mb for _, mb in seg[-k:]], 50)
            ts = [t for t, _ in seg]
            ys = [mb for _, mb in seg]
            tm, ym = sum(ts) / len(ts), sum(ys) / len(ys)
            var = sum((t - tm) ** 2 for t in ts) or 1.0
            slope = sum((t - tm) * (y - ym) for t, y in zip(ts, ys, strict=True)) / var
            fig.update(
                from_s=round(seg[0][0]),
                to_s=round(seg[-1][0]),
                first_mb=round(first, 1),
                end_mb=round(last, 1),
                growth_pct=round((last - first) / first * 100, 2),
                slope_mb_per_h=round(slope * 3600, 1),
            )
        else:
            fig["growth_pct"] = None  # too short a run after its last restart to say
        out[name] = fig
    return out


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------- the soak


def run_soak(
    minutes: float,
    *,
    faults: Sequence[str] = (),
    rps: float = 10.0,
    events_per_s: float = 100.0,
    batch: int = 10,
    users: int = 1000,
    items: int = 200,
    warmup_s: float | None = None,
    sample_s: float = 5.0,
    export_every_s: float = 60.0,
    rebuild_every_s: float = 300.0,
    rec_timeout_s: float = 5.0,
    drain_timeout_s: float = 180.0,
    progress_s: float = 15.0,
    keep: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Start the servers and functions, run the soak, stop everything; the report."""
    from zerorec.online import load_model
    from zerorec.storage import kv_store, object_store

    work = keep or Path(tempfile.mkdtemp(prefix="zerorec-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    warmup_s = min(180.0, minutes * 60 * 0.15) if warmup_s is None else warmup_s
    infra = Infra.create(work / "infra")
    log(f"soak: own servers in {infra.root} on ports {infra.ports}; logs in {work}")
    load_at_start = uptime()
    infra.run("start")
    try:
        backend = infra.backend_env()
        stack = make_soak_stack(backend, work / "logs", work / "data")
        (work / "logs").mkdir(parents=True, exist_ok=True)
        version = stack.lf.ensure_model(stack.env, True)
        settings = settings_from_env(stack.env)
        store = object_store(settings)
        model_users = sorted(load_model(store, settings.model_name).rec.data.user_index)
        random.Random(7).shuffle(model_users)
        model_users = model_users[:500]
        log(f"soak: model {settings.model_name} {version}, {len(model_users)} users for recommendations")
        run = uuid.uuid4().hex[:8]
        category = f"sc{run}"
        user_ids = [f"s{run}u{n}" for n in range(users)]
        item_ids = [f"s{run}i{n}" for n in range(items)]
        from zerorec.kafka_topics import apply_topics, load_topic_specs

        # The topics as a cluster has them (knative/eventing/kafka-topics.yaml: partitions,
        # retention), not as auto-creation would make them (one partition).
        apply_topics(settings.kafka_bootstrap, load_topic_specs())
        kv = kv_store(settings)
        ops = []
        for item in item_ids:
            ops += item_upsert_writes(ItemRecord(item, item, (category,), time.time()))
        kv.write(ops)
        try:
            took = stack.start(PROCESSES, timeout_s=240)
            log("soak: started " + ", ".join(f"{k} {v}s" for k, v in took.items()))
            report = _drive(
                stack, infra, store, settings, kv, model_users, user_ids, item_ids, run, category,
                minutes=minutes, faults=faults, rps=rps, events_per_s=events_per_s, batch=batch,
                warmup_s=warmup_s, sample_s=sample_s, export_every_s=export_every_s,
                rebuild_every_s=rebuild_every_s, rec_timeout_s=rec_timeout_s,
                drain_timeout_s=drain_timeout_s, progress_s=progress_s, log=log,
            )  # fmt: skip
        finally:
            stack.stop_all()
            kv.close()
    finally:
        with contextlib.suppress(Exception):
            infra.run("stop")
    report["meta"].update(
        model_version=version,
        uptime_start=load_at_start,
        uptime_end=uptime(),
        cpus=os.cpu_count(),
        logs=str(work),
    )
    return report


def _drive(
    stack: Stack,
    infra: Infra,
    store: Any,
    settings: Any,
    kv: Any,
    model_users: Sequence[str],
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    run: str,
    category: str,
    *,
    minutes: float,
    faults: Sequence[str],
    rps: float,
    events_per_s: float,
    batch: int,
    warmup_s: float,
    sample_s: float,
    export_every_s: float,
    rebuild_every_s: float,
    rec_timeout_s: float,
    drain_timeout_s: float,
    progress_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    soak = Soak(stack, infra)
    probes = _Probes(kv)
    plan = fault_plan(faults, minutes, warmup_s)
    threads = [
        threading.Thread(target=recommend_load, args=(soak, model_users, rps, rec_timeout_s), daemon=True),
        threading.Thread(
            target=event_load,
            args=(soak, probes, user_ids, item_ids, run, events_per_s / batch, batch),
            daemon=True,
        ),
        threading.Thread(
            target=worker_tasks,
            args=(soak, {"export-events": export_every_s, "rebuild-hot": rebuild_every_s}),
            daemon=True,
        ),
        threading.Thread(target=sample_rss, args=(soak, sample_s), daemon=True),
        threading.Thread(target=probes.run, daemon=True),
        threading.Thread(
            target=run_faults, args=(soak, Faults(soak, store, settings.model_name), plan, log), daemon=True
        ),
    ]
    log(
        f"soak: {minutes} min at {rps} recommendations/s and {events_per_s} events/s (batches of {batch}); "
        f"warm-up {warmup_s:.0f} s; faults: {', '.join(f'{n} at {a:.0f}s' for a, n in plan) or 'none'}"
    )
    for th in threads:
        th.start()
    end = minutes * 60
    while soak.now() < end:
        time.sleep(min(progress_s, max(0.0, end - soak.now())))
        log(progress_line(soak, probes))
    faults_thread = threads[-1]
    if faults_thread.is_alive():
        log("soak: waiting for the fault in progress to finish")
        faults_thread.join(300)
    soak.stop.set()
    for th in threads[:4]:
        th.join(60)
    # Drain: wait until every accepted event has been applied (bounded).
    deadline = time.monotonic() + drain_timeout_s
    applied = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            applied = _tokens(kv, soak.accepted_ids)
        if applied >= len(soak.accepted_ids):
            break
        time.sleep(2.0)
    time.sleep(1.0)  # late duplicates get their chance to show up
    probes.stop.set()
    applications = _applications(kv, list(user_ids) + soak.probe_users, category)
    applied = _tokens(kv, soak.accepted_ids)
    health = {}
    for name in FUNCTIONS:
        try:
            health[name] = httpx.get(stack.url(name) + "/health", timeout=5).status_code
        except httpx.HTTPError:
            health[name] = 0
    return assemble(soak, probes, applied, applications, warmup_s, health, log)


def progress_line(soak: Soak, probes: _Probes) -> str:
    with soak.lock:
        recs, posts = list(soak.recs), list(soak.posts)
        rss = {}
        for _, name, _, mb in soak.rss[-40:]:
            rss[name] = mb
        tasks = list(soak.tasks)
    rc = _stats(recs)
    ev = _stats(posts)
    lags = sorted(probes.lags_ms[-500:])
    lag = f"{percentile(lags, 99):.0f}" if lags else "-"
    late = sum(1 for t in tasks if not t["status"])
    current = soak.faults[-1].name if soak.faults and soak.faults[-1].end == 0 else ""
    return (
        f"soak: {soak.now():6.0f}s rec {rc['requests']} (degraded {rc.get('degraded', 0)}, errors "
        f"{rc.get('error', 0)}, p99 {rc['p99_ms']} ms) events posted {ev['requests']} (accepted "
        f"{ev.get('accepted', 0)}, 503 {ev.get('unavailable', 0)}, errors {ev.get('error', 0)}) lag p99 "
        f"{lag} ms; tasks {len(tasks)} ({late} unanswered); RSS MB "
        + " ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items()))
        + (f"; in fault {current}" if current else "")
        + f"; load {os.getloadavg()[0]:.2f}"
    )


def assemble(
    soak: Soak,
    probes: _Probes,
    applied: int,
    applications: int,
    warmup_s: float,
    health: Mapping[str, int],
    log: Callable[[str], None],
) -> dict[str, Any]:
    accepted = len(soak.accepted_ids)
    windows = []
    for f in soak.faults:
        rec_at = recovered_at(soak, f)
        windows.append((f.start, (rec_at if rec_at is not None else soak.now()) + 1.0))
    rec, ev = _stats(soak.recs), _stats(soak.posts)
    steady_rec = _stats([s for s in soak.recs if s.t >= warmup_s and not in_fault(s.t, windows)])
    lags = sorted(probes.lags_ms)
    steady_lags = sorted(
        ms
        for sent, ms in zip(probes.sent_at, probes.lags_ms, strict=True)
        if not in_fault(sent - soak.started, windows)
    )
    rss = rss_figures(soak, warmup_s)
    errors = rec.get("error", 0) + ev.get("error", 0)
    task_failures = [t for t in soak.tasks if t["status"] and not (200 <= t["status"] < 300)]
    unanswered = [t for t in soak.tasks if not t["status"]]  # no answer within the delivery timeout
    report = {
        "errors": errors,
        "degraded": rec.get("degraded", 0) + ev.get("unavailable", 0),
        "accepted": accepted,
        "applied": applied,
        "lost": accepted - applied,
        "duplicated": applications - applied,
        "lag_p99_ms": round(percentile(lags, 99), 1) if lags else None,
        "rss_growth_pct": {name: f.get("growth_pct") for name, f in sorted(rss.items())},
        "lag_p50_ms": round(percentile(lags, 50), 1) if lags else None,
        "lag_max_ms": round(lags[-1], 1) if lags else None,
        "lag_samples": len(lags),
        "lag_p99_ms_outside_faults": round(percentile(steady_lags, 99), 1) if steady_lags else None,
        "recommendations": rec,
        "recommendations_outside_faults": steady_rec,
        "event_posts": ev,
        "target_down": rec.get("target_down", 0) + ev.get("target_down", 0),
        "rss": rss,
        "rss_slope_mb_per_h": {name: f.get("slope_mb_per_h") for name, f in sorted(rss.items())},
        "worker_tasks": {
            "fired": len(soak.tasks),
            "unanswered": len(unanswered),
            "failed": len(task_failures),
            "max_ms": max((t["ms"] for t in soak.tasks), default=None),
            "by_task": {
                name: {
                    "fired": sum(1 for t in soak.tasks if t["task"] == name),
                    "unanswered": sum(1 for t in unanswered if t["task"] == name),
                    "failed": sum(1 for t in task_failures if t["task"] == name),
                    "max_ms": max(t["ms"] for t in soak.tasks if t["task"] == name),
                }
                for name in sorted({t["task"] for t in soak.tasks})
            },
            "runs": soak.tasks,
        },
        "timeline": timeline(soak, probes),
        "per_minute": per_minute(soak, probes),
        "health_at_end": dict(health),
        "meta": {
            "duration_s": round(soak.now(), 1),
            "warmup_s": warmup_s,
            "rss_series": _downsample(soak.rss),
        },
    }
    report["pass"] = report["lost"] == 0 and report["duplicated"] == 0 and report["errors"] == 0
    return report


def _downsample(rows: Sequence[tuple[float, str, int, float]], every_s: float = 30.0) -> dict[str, list]:
    out: dict[str, list] = {}
    last: dict[str, float] = {}
    for t, name, _pid, mb in rows:
        if t - last.get(name, -1e9) >= every_s:
            out.setdefault(name, []).append([round(t), mb])
            last[name] = t
    return out


def render(report: Mapping[str, Any]) -> str:
    lines = [
        f"soak: {report['meta']['duration_s']:.0f} s; {report['meta'].get('uptime_start', '')} "
        f"-> {report['meta'].get('uptime_end', '')}",
        f"recommendations: {json.dumps(report['recommendations'])}",
        f"  outside faults: {json.dumps(report['recommendations_outside_faults'])}",
        f"event posts: {json.dumps(report['event_posts'])}",
        f"accepted {report['accepted']}, applied {report['applied']}, lost {report['lost']}, "
        f"duplicated {report['duplicated']}; errors {report['errors']}, degraded {report['degraded']}, "
        f"target down {report['target_down']}",
        f"event lag: p50 {report['lag_p50_ms']} ms, p99 {report['lag_p99_ms']} ms "
        f"(outside faults {report['lag_p99_ms_outside_faults']} ms), max {report['lag_max_ms']} ms, "
        f"{report['lag_samples']} samples",
        f"worker tasks: {report['worker_tasks']['fired']} fired, "
        f"{report['worker_tasks']['unanswered']} unanswered within {DELIVERY_TIMEOUT_S:.0f} s, "
        f"{report['worker_tasks']['failed']} failed (non-2xx), "
        f"max {report['worker_tasks']['max_ms']} ms; {json.dumps(report['worker_tasks']['by_task'])}",
        f"{'process':14s} {'growth %':>9} {'slope MB/h':>11} {'first MB':>9} {'end MB':>8} "
        f"{'peak MB':>8}  window",
    ]
    for name, f in sorted(report["rss"].items()):
        window = f"{f.get('from_s', '-')}..{f.get('to_s', '-')} s" + (
            " (restarted)" if f["restarted"] else ""
        )
        lines.append(
            f"{name:14s} {f.get('growth_pct')!s:>9} {f.get('slope_mb_per_h')!s:>11} {f.get('first_mb')!s:>9} "
            f"{f.get('end_mb')!s:>8} {f['peak_mb']!s:>8}  {window}"
        )
    if report["timeline"]:
        lines.append("fault timeline (recovered: s from the fault's start to 5 s of clean answers):")
    for f in report["timeline"]:
        r, e = f["recommendations"], f["events"]
        extra = {
            k: v
            for k, v in f.items()
            if k
            not in (
                "fault",
                "start_s",
                "action_done_s",
                "recovered_s",
                "recommendations",
                "events",
                "lag_p99_ms",
                "lag_max_ms",
            )
        }
        lines.append(
            f"  {f['start_s']:7.1f}s {f['fault']:22s} done +{f['action_done_s'] - f['start_s']:.1f}s "
            f"recovered +{f['recovered_s']}s | rec {r['requests']} ok {r.get('ok', 0)} degraded "
            f"{r.get('degraded', 0)} errors {r.get('error', 0)} down {r.get('target_down', 0)} "
            f"p99 {r['p99_ms']} ms"
            f" | events {e['requests']} accepted {e.get('accepted', 0)} 503 {e.get('unavailable', 0)} errors "
            f"{e.get('error', 0)} down {e.get('target_down', 0)} | lag p99 {f['lag_p99_ms']} ms "
            f"| {json.dumps(extra)}"
        )
    lines.append("per minute: rec p50/p99 ms, degraded, errors, event lag p50/p99 ms")
    for row in report["per_minute"]:
        lines.append(
            f"  {row['minute']:3d}  {row['rec_p50_ms']}/{row['rec_p99_ms']}  {row['rec_degraded']}  "
            f"{row['errors']}  {row['lag_p50_ms']}/{row['lag_p99_ms']}"
        )
    lines.append(f"health at end: {report['health_at_end']}")
    lines.append("PASS (0 lost, 0 duplicated, 0 errors)" if report["pass"] else "FAIL")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run the soak, print progress, the figures and the fault timeline, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--faults",
        nargs="?",
        const="all",
        default=None,
        help=f"faults during the soak: all (no value) or a comma list of {', '.join(ALL_FAULTS)}",
    )
    parser.add_argument("--rps", type=float, default=10.0, help="recommendations per second")
    parser.add_argument("--events-per-s", type=float, default=100.0, help="behaviour events per second")
    parser.add_argument("--batch", type=int, default=10, help="events per POST /events")
    parser.add_argument(
        "--warmup", type=float, help="seconds before RSS growth is measured (default 15%%, <=180)"
    )
    parser.add_argument(
        "--export-every", type=float, default=60.0, help="seconds between event exports (0: none)"
    )
    parser.add_argument(
        "--rebuild-every", type=float, default=300.0, help="seconds between hot-list rebuilds (0: none)"
    )
    parser.add_argument("--keep", type=Path, help="folder for servers, data and logs (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rps <= 0 or args.events_per_s <= 0 or args.batch < 2:
        parser.error("--minutes, --rps and --events-per-s must be > 0 and --batch >= 2")
    report = run_soak(
        args.minutes,
        faults=parse_faults(args.faults),
        rps=args.rps,
        events_per_s=args.events_per_s,
        batch=args.batch,
        warmup_s=args.warmup,
        export_every_s=args.export_every,
        rebuild_every_s=args.rebuild_every,
        keep=args.keep,
        log=lambda line: print(line, flush=True),
    )
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
