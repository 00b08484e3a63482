"""Ingest benchmark: behavior -> Kafka -> KafkaSource dispatcher -> consumer -> Redis, real servers.

Starts the behavior and consumer functions (functions-framework CLI) and the local KafkaSource
dispatcher as separate processes on a fresh topic (`--partitions`), configured from the real
knative/eventing/kafka-sources.yaml (same delivery and ordering). A load generator posts batches of
click events over a few keep-alive connections at `--rate` events/s (0 = as fast as possible), one
probe event per batch on a user of its own to time POST -> visible in the user's recent list.

Counting is exact: every event is a click (weight 1) on an item of one category, so the sum of the
users' affinity counters for it is the number of applications; `applied` is the number of accepted
ids whose idempotency token is in the user's dedupe window; lost = accepted - applied; duplicated =
applications - applied.
CPU seconds of every process (behavior, consumer, dispatcher, Kafka, Redis, load generator) are
read from /proc to say where the time goes per event.

Run: `python -m zerorec.bench_ingest [--events 60000] [--rate 3000] [--json FILE]` with the servers
of `local/infra.sh start` (endpoints from `local/infra.sh env` or the defaults). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, closing, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from zerorec.errors import ZeroRecError
from zerorec.realtime import (
    CATEGORIES,
    ItemRecord,
    behavior_token,
    decayed_increment,
    hot_key,
    item_upsert_writes,
    user_state_from,
    user_state_reads,
)
from zerorec.runner import command as runner_command
from zerorec.settings import Settings
from zerorec.storage.kv import KVStore, Record, TokenSeen, ZTop

REPO = Path(__file__).resolve().parents[2]
KAFKA_SOURCES = REPO / "knative" / "eventing" / "kafka-sources.yaml"
HOST = "127.0.0.1"


# ---------------------------------------------------------------- processes


def free_port() -> int:
    """A free loopback port."""
    with closing(socket.socket()) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Proc:
    """A started process, its log file and (for functions) its base URL."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start_function(name: str, env: Mapping[str, str], log_dir: Path, port: int | None = None) -> Proc:
    """Start functions/<name>/main.py (zerorec.runner) and wait for GET /health."""
    port = port or free_port()
    log_path = log_dir / f"{name}-{port}.log"
    command = runner_command(name, REPO / "functions" / name / "main.py", HOST, port)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(command, cwd=REPO, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    proc = Proc(name, popen, log_path, f"http://{HOST}:{port}")
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(proc.url + "/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if popen.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"{name} did not start:\n{proc.log_tail()}")
        time.sleep(0.1)


def bench_manifest(topic: str, group: str, dlq: str, *, base: Path = KAFKA_SOURCES) -> str:
    """The behavior-to-consumer KafkaSource of the real manifests on another topic, group and DLQ."""
    docs = [d for d in yaml.safe_load_all(base.read_text()) if isinstance(d, dict)]
    source = next(d for d in docs if d["metadata"]["name"] == "behavior-to-consumer")
    source["spec"]["topics"] = [topic]
    source["spec"]["consumerGroup"] = group
    source["spec"]["delivery"]["deadLetterSink"] = {
        "ref": {"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "KafkaSink", "name": "bench-dlq"}
    }
    sink = {
        "apiVersion": "eventing.knative.dev/v1alpha1",
        "kind": "KafkaSink",
        "metadata": {"name": "bench-dlq", "namespace": "zerorec"},
        "spec": {"topic": dlq, "bootstrapServers": ["ignored:9092"]},
    }
    return yaml.safe_dump_all([source, sink], sort_keys=False)


def start_dispatcher(
    manifest: Path,
    consumer_url: str,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    delivery: str = "single",
    delivery_batch: int = 100,
) -> Proc:
    """Start the local KafkaSource dispatcher for `manifest`, delivering to `consumer_url`
    (`delivery`: single = one event per request as on a cluster, batch = local throughput mode)."""
    log_path = log_dir / f"dispatcher-{uuid.uuid4().hex[:6]}.log"
    command = [sys.executable, "-m", "local.eventing.kafka_source", "--manifests", str(manifest)]
    command += ["--sink", f"consumer={consumer_url}", "--progress-every", "5"]
    command += ["--delivery", delivery, "--batch-size", str(delivery_batch)]
    with log_path.open("ab") as log:
        popen = subprocess.Popen(command, cwd=REPO, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    return Proc("dispatcher", popen, log_path)


def infra_env(settings: Settings) -> dict[str, str]:
    """The environment of the pipeline processes: real backends, this settings' endpoints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROREC_")}
    env.update(
        {
            "ZEROREC_EVENT_BUS": "kafka",
            "ZEROREC_KV_STORE": "redis",
            "ZEROREC_OBJECT_STORE": "s3",
            "ZEROREC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "ZEROREC_REDIS_URL": settings.redis_url,
            "ZEROREC_S3_ENDPOINT": settings.s3_endpoint,
            "ZEROREC_S3_BUCKET": settings.s3_bucket,
            "ZEROREC_S3_ACCESS_KEY": settings.s3_access_key,
            "ZEROREC_S3_SECRET_KEY": settings.s3_secret_key,
            "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO)]),  # this checkout's zerorec
            "ZEROREC_ALLOW_UNAUTHENTICATED": "1",  # loopback processes of a benchmark: no API key
        }
    )
    return env


# ---------------------------------------------------------------- CPU accounting


def _cpu_s(pid: int, *, descendants: bool = True) -> float:
    """utime + stime of `pid` (and its live descendants), in seconds (0 if gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        if descendants:
            todo += [c for c, parent in parents.items() if parent == p]
    return total


def infra_pids() -> dict[str, int]:
    """Pids of the local Kafka and Redis servers (local/infra.sh pid files), where readable."""
    base = Path(os.environ.get("ZEROREC_INFRA_DIR", REPO / ".local-infra"))
    pids = {}
    for name in ("kafka", "redis"):
        with suppress(OSError, ValueError):
            pids[name] = int((base / name / "pid").read_text().strip())
    return pids


# ---------------------------------------------------------------- load and measurement


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Result:
    """The benchmark's figures (the --json keys first)."""

    events_per_s: float
    lag_p50_ms: float
    lag_p99_ms: float
    accepted: int
    applied: int
    lost: int
    duplicated: int
    rejected: int = 0
    post_errors: int = 0
    post_events_per_s: float = 0.0
    duration_s: float = 0.0
    lag_samples: int = 0
    lag_max_ms: float = 0.0
    partitions: int = 0
    rate: float = 0.0
    batch: int = 0
    connections: int = 0
    delivery: str = "single"
    load_average: str = ""
    cpu_ms_per_event: dict[str, float] = field(default_factory=dict)
    dlq: int = 0

    def lines(self) -> list[str]:
        cpu = ", ".join(f"{k} {v:.3f}" for k, v in self.cpu_ms_per_event.items())
        return [
            f"sustained: {self.events_per_s:,.0f} events/s end to end ({self.accepted} events in "
            f"{self.duration_s:.1f} s; posting ran at {self.post_events_per_s:,.0f} events/s; "
            f"offered rate {self.rate or 'max'}, batches of {self.batch}, {self.connections} connections, "
            f"{self.partitions} partitions; {self.delivery} delivery; load average {self.load_average})",
            f"lag POST -> visible: p50 {self.lag_p50_ms:.0f} ms, p99 {self.lag_p99_ms:.0f} ms, "
            f"max {self.lag_max_ms:.0f} ms ({self.lag_samples} samples)",
            f"counted: accepted {self.accepted}, applied {self.applied}, lost {self.lost}, "
            f"duplicated {self.duplicated}, rejected {self.rejected}, failed posts {self.post_errors}, "
            f"dead-lettered {self.dlq}",
            f"CPU ms per event: {cpu}",
        ]


class _Probes:
    """Probe events: one user each; visible when the user's recent list is non-empty."""

    def __init__(self, kv: KVStore) -> None:
        self.kv = kv
        self.pending: dict[str, float] = {}
        self.lags_ms: list[float] = []
        self.sent_at: list[float] = []  # monotonic send time of each lag sample, in the same order
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def add(self, user: str, sent_at: float) -> None:
        with self.lock:
            self.pending[user] = sent_at

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                users = list(self.pending)
            if users:
                try:
                    found = self.kv.read([op for u in users for op in user_state_reads(u)])
                except ZeroRecError:  # the store is briefly down (a soak's fault): try again
                    self.stop.wait(0.2)
                    continue
                now = time.monotonic()
                with self.lock:
                    for user, result in zip(users, found, strict=True):
                        if user_state_from(user, [result]).recent_items:
                            sent = self.pending.pop(user)
                            self.lags_ms.append((now - sent) * 1000)
                            self.sent_at.append(sent)
            self.stop.wait(0.02)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def _applications(kv: KVStore, users: Sequence[str], category: str) -> int:
    total = 0.0
    for i in range(0, len(users), 5000):
        part = users[i : i + 5000]
        records: list[Record] = kv.read([op for u in part for op in user_state_reads(u)])
        total += sum(r.counters.get(CATEGORIES, {}).get(category, 0.0) for r in records)
    return round(total)


def _tokens(kv: KVStore, accepted: Sequence[tuple[str, str]]) -> int:
    """How many of the accepted (user, event id) pairs are in their user's dedupe window."""
    found = 0
    for i in range(0, len(accepted), 5000):
        ops = [TokenSeen(behavior_token(u, e)) for u, e in accepted[i : i + 5000]]
        found += sum(bool(v) for v in kv.read(ops))
    return found


def run_ingest_benchmark(
    *,
    events: int = 60_000,
    rate: float = 3000.0,
    batch: int = 500,
    connections: int = 4,
    users: int = 2000,
    items: int = 500,
    partitions: int = 8,
    max_duration_s: float = 60.0,
    drain_timeout_s: float = 180.0,
    delivery: str = "single",
    delivery_batch: int = 100,
    settings: Settings | None = None,
    log: Any = print,
) -> Result:
    """Run the benchmark once (fresh topic and keys) and return its figures."""
    from zerorec.storage.bus_kafka import KafkaEventBus
    from zerorec.storage.kv_redis import RedisKVStore

    settings = settings or Settings(event_bus="kafka", kv_store="redis", object_store="s3")
    run = uuid.uuid4().hex[:8]
    topic, dlq, group = f"bench.{run}.behavior", f"bench.{run}.dlq", f"bench-{run}"
    category = f"bc{run}"
    user_ids = [f"b{run}u{n}" for n in range(users)]
    item_ids = [f"b{run}i{n}" for n in range(items)]
    kv = RedisKVStore.from_settings(settings)
    bus = KafkaEventBus.from_settings(settings)
    bus.ensure_topics([topic], partitions=partitions)
    bus.ensure_topics([dlq])
    for i in range(0, items, 500):  # catalogue set-up, outside the measurement
        ops = []
        for item in item_ids[i : i + 500]:
            ops += item_upsert_writes(ItemRecord(item, item, (category,), time.time()))
        kv.write(ops)

    env = infra_env(settings)
    env["ZEROREC_TOPIC_BEHAVIOR"] = topic
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="zerorec-bench-") as tmp:
        log_dir = Path(tmp)
        manifest = log_dir / "sources.yaml"
        manifest.write_text(bench_manifest(topic, group, dlq))
        behavior = start_function("behavior", env, log_dir)
        stack.callback(behavior.stop)
        consumer = start_function("consumer", env, log_dir)
        stack.callback(consumer.stop)
        dispatcher = start_dispatcher(
            manifest, consumer.url + "/", env, log_dir, delivery=delivery, delivery_batch=delivery_batch
        )
        stack.callback(dispatcher.stop)
        log(
            f"[bench] run {run}: topic {topic} ({partitions} partitions), behavior {behavior.url}, "
            f"consumer {consumer.url}"
        )

        probes = _Probes(kv)
        probe_users: list[str] = []
        accepted_ids: list[tuple[str, str]] = []  # (user, event id)
        counters = {"rejected": 0, "post_errors": 0}
        lock = threading.Lock()
        rng = random.Random(run)

        stamp = _now()  # one timestamp for all: each click adds the same amount to the hot list
        unit = decayed_increment(1.0, datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())

        def make_batch(n: int) -> tuple[list[dict[str, Any]], str]:
            body = [
                {
                    "kind": "click",
                    "user_id": rng.choice(user_ids),
                    "item_id": rng.choice(item_ids),
                    "timestamp": stamp,
                }
                for _ in range(n - 1)
            ]
            probe = f"b{run}p{uuid.uuid4().hex[:10]}"
            body.append(
                {"kind": "click", "user_id": probe, "item_id": rng.choice(item_ids), "timestamp": stamp}
            )
            return body, probe

        def post(client: httpx.Client, n: int, *, probe_lag: bool) -> None:
            body, probe = make_batch(n)
            sent = time.monotonic()
            try:
                r = client.post(behavior.url + "/events", json=body, timeout=30)
            except httpx.HTTPError:
                with lock:
                    counters["post_errors"] += 1
                return
            if r.status_code != 202:
                with lock:
                    counters["post_errors"] += 1
                return
            doc = r.json()
            with lock:
                accepted_ids.extend(
                    (e["user_id"], i) for e, i in zip(body, doc["ids"], strict=True) if i is not None
                )
                counters["rejected"] += doc["rejected"]
                probe_users.append(probe)
            if probe_lag and doc["ids"][-1] is not None:
                probes.add(probe, sent)

        # Warm-up: one small batch through the whole loop (connections, group join, script load).
        with httpx.Client() as client:
            post(client, 10, probe_lag=False)
        warm = len(accepted_ids)
        deadline = time.monotonic() + 60
        while _applications(kv, probe_users, category) < 1:
            if time.monotonic() > deadline or dispatcher.popen.poll() is not None:
                raise RuntimeError(f"warm-up event never arrived:\n{dispatcher.log_tail()}")
            time.sleep(0.05)

        pids = {
            "behavior": behavior.popen.pid,
            "consumer": consumer.popen.pid,
            "dispatcher": dispatcher.popen.pid,
            **infra_pids(),
            "loadgen": os.getpid(),
        }
        load_before = _load_average()
        cpu_before = {name: _cpu_s(pid, descendants=name != "loadgen") for name, pid in pids.items()}
        prober = threading.Thread(target=probes.run, daemon=True)
        prober.start()
        batches = max(1, events // batch)
        interval = batch / rate * connections if rate > 0 else 0.0
        started = time.monotonic()
        stop_at = started + max_duration_s
        next_batch = iter(range(batches))

        def load() -> None:
            with httpx.Client(limits=httpx.Limits(max_keepalive_connections=1)) as client:
                t = time.monotonic()
                while time.monotonic() < stop_at:
                    with lock:
                        if next(next_batch, None) is None:
                            return
                    post(client, batch, probe_lag=True)
                    if interval:
                        t += interval
                        time.sleep(max(0.0, t - time.monotonic()))

        threads = []
        for _k in range(connections):
            thread = threading.Thread(target=load, daemon=True)
            threads.append(thread)
            thread.start()
            if interval:
                time.sleep(interval / connections)  # spread the connections over the interval
        for thread in threads:
            thread.join()
        posted_at = time.monotonic()

        accepted = len(accepted_ids)  # the warm-up batch included
        all_users = user_ids + probe_users
        done_at = time.monotonic()
        deadline = posted_at + drain_timeout_s
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            (hot,) = kv.read([ZTop(hot_key(category), items + 1)])
            applications = round(sum(score for _, score in hot) / unit)  # one read, not one per user
            done_at = time.monotonic()
            if applications >= accepted:
                break
            if applications != last:
                last, last_change = applications, done_at
            elif done_at - last_change > 30:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # late duplicates, if any, get their chance to show up
        probes.stop.set()
        prober.join(5)
        cpu_after = {name: _cpu_s(pid, descendants=name != "loadgen") for name, pid in pids.items()}

        applications = _applications(kv, all_users, category)
        applied = _tokens(kv, accepted_ids)
        total_accepted = len(accepted_ids)
        duration = max(done_at - started, 1e-9)
        measured = total_accepted - warm  # the warm-up batch is not part of the rate
        lags = sorted(probes.lags_ms)
        dead = _count_topic(bus, dlq, f"bench-dlq-{run}")
        result = Result(
            events_per_s=measured / duration,
            lag_p50_ms=_percentile(lags, 0.5),
            lag_p99_ms=_percentile(lags, 0.99),
            accepted=total_accepted,
            applied=applied,
            lost=total_accepted - applied,
            duplicated=applications - applied,
            rejected=counters["rejected"],
            post_errors=counters["post_errors"],
            post_events_per_s=measured / max(posted_at - started, 1e-9),
            duration_s=duration,
            lag_samples=len(lags),
            lag_max_ms=lags[-1] if lags else float("nan"),
            partitions=partitions,
            rate=rate,
            batch=batch,
            connections=connections,
            delivery=delivery,
            load_average=f"{load_before} before, {_load_average()} after",
            cpu_ms_per_event={
                name: (cpu_after[name] - cpu_before[name]) * 1000 / max(measured, 1) for name in pids
            },
            dlq=dead,
        )
        if result.lost or result.duplicated:
            tail = [line for line in dispatcher.log_tail(20_000).splitlines() if "kafka-source" in line]
            log("[bench] dispatcher progress:\n" + "\n".join(tail[-10:]))
    kv.close()
    bus.close()
    return result


def _load_average() -> str:
    """The 1/5/15-minute load averages (other work on the machine skews the figures)."""
    with suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def _count_topic(bus: Any, topic: str, group: str) -> int:
    consumer = bus.consumer([topic], group)
    try:
        n, empty = 0, 0
        while empty < 2:
            got = consumer.poll(1000, 0.5)
            n += len(got)
            empty = 0 if got else empty + 1
        return n
    finally:
        consumer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run the benchmark, print the figures, optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000, help="events to post (bounded)")
    parser.add_argument(
        "--rate", type=float, default=3000.0, help="offered events/s (0 = as fast as possible)"
    )
    parser.add_argument("--batch", type=int, default=500, help="events per POST")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections posting")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--partitions", type=int, default=8, help="partitions of the benchmark topic")
    parser.add_argument("--max-duration", type=float, default=60.0, help="seconds of posting at most")
    parser.add_argument(
        "--delivery",
        choices=("single", "batch"),
        default="single",
        help="dispatcher delivery: single (one event per request, as the real KafkaSource) or batch "
        "(local throughput mode, application/cloudevents-batch+json)",
    )
    parser.add_argument("--delivery-batch", type=int, default=100, help="events per batched request")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run_ingest_benchmark(
        events=args.events,
        rate=args.rate,
        batch=args.batch,
        connections=args.connections,
        users=args.users,
        items=args.items,
        partitions=args.partitions,
        max_duration_s=args.max_duration,
        delivery=args.delivery,
        delivery_batch=args.delivery_batch,
    )
    for line in result.lines():
        print(line)
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0 if not (result.lost or result.duplicated) else 1


if __name__ == "__main__":
    sys.exit(main())
