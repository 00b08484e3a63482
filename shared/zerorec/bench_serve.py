"""Serving benchmark: POST /recommend latency and throughput, the in-process floor, RSS, cold start.

`zerorec bench serve [--real] [--json FILE]` starts the five serving functions and the recommender
BFF (local/functions.py's helpers, free loopback ports, embedded backends by default or the real
Redis/S3 of `local/infra.sh env` with --real), warms them, then:

1. drives `POST /recommend` (top 20 out of 500 recall candidates, real user ids of the published
   model) at each concurrency (1, 8, 32) for a bounded time/count, over keep-alive connections with
   a small raw-asyncio HTTP/1.1 client (cheap: it shares the CPU with the servers), and reports
   p50/p95/p99 latency, throughput, errors and degraded answers, and the BFF's per-stage p50s;
2. times the same requests in one process without HTTP (the floor): the BFF's `Recommender`
   calling the stages of zerorec.online through an in-memory transport;
3. reads every function's memory after the load (/proc): its process's VmRSS plus the private
   pages of any child (`rss_mb`; the plain VmRSS sum over the tree is `rss_sum_mb`: the same while
   zerorec.runner serves each function in one process), and the CPU each process spent per request;
4. restarts each function once and times process start -> first successful real request
   (the model loaded from the object store: S3 with --real).

Prints a table and PASS/MISS against the targets (p99 <= 25 ms at concurrency 8, cold start
<= 1 s, RSS within each service's memory budget); `--json FILE` writes the figures. Stops what it
started. Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from zerorec.observability.scrape import recommend_counts, scrape

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
FUNCTIONS = ("recall", "ranking", "reranking", "user", "item", "recommender")
# The functions each topology runs: a function per stage, or recall + ranking + reranking in one.
TOPOLOGIES = {"per-service": FUNCTIONS, "compact": ("pipeline", "user", "item", "recommender")}
CONCURRENCY = (1, 8, 32)
TOP_N = 20
CANDIDATES = 500
P99_TARGET_MS = 25.0
P99_AT = 8
COLD_START_TARGET_MS = 1000.0
INPROCESS_WARMUP = 10
COLD_STARTS = 3  # restarts per function: the figure is their median (a 2-core VM's page faults vary)
RSS_BUDGET_MB = {  # the seed's memory limits (Mi); pipeline: knative/overlays/compact
    "recommender": 128,
    "pipeline": 1280,
    "recall": 512,
    "ranking": 512,
    "reranking": 256,
    "user": 256,
    "item": 256,
}


def _local_functions() -> Any:
    """local/functions.py (the process helpers), importable from a checkout."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import local.functions as lf

    return lf


# ------------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class LevelStats:
    """What one concurrency level measured (latencies in seconds of successful answers)."""

    concurrency: int
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0
    degraded: int = 0
    stages_ms: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per process during the level
    metrics: dict[str, float] = field(default_factory=dict)  # the BFF's /metrics deltas over the level

    def figures(self) -> dict[str, Any]:
        """p50/p95/p99 in ms, rps (successful answers per second), counts, per-stage p50s."""
        ms = [x * 1000 for x in self.latencies_s]
        ok = len(ms)
        return {
            "requests": ok + self.errors,
            "ok": ok,
            "errors": self.errors,
            "degraded": self.degraded,
            "p50_ms": _r(percentile(ms, 50)),
            "p95_ms": _r(percentile(ms, 95)),
            "p99_ms": _r(percentile(ms, 99)),
            "rps": _r(ok / self.wall_s if self.wall_s > 0 else 0.0, 1),
            "stage_p50_ms": {k: _r(percentile(v, 50)) for k, v in sorted(self.stages_ms.items())},
            "cpu_ms_per_request": {k: _r(v * 1000 / max(ok, 1)) for k, v in self.cpu_s.items()},
            "cpu_ms_per_request_total": _r(sum(self.cpu_s.values()) * 1000 / max(ok, 1)),
            # /metrics scraped before and after the level: the BFF's own counts of the same requests
            "metrics": dict(self.metrics),
            "metrics_match": bool(self.metrics)
            and self.metrics.get("ok") == ok
            and self.metrics.get("degraded") == self.degraded,
        }


def _r(x: float, digits: int = 2) -> float:
    return round(x, digits) if x == x else x


def targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """PASS/MISS of every target against the assembled figures (a missing figure is a MISS)."""
    out: list[dict[str, Any]] = []
    p99 = report["concurrency"].get(str(P99_AT), {}).get("p99_ms")
    out.append(_target(f"p99 at concurrency {P99_AT}", p99, P99_TARGET_MS, "ms"))
    for name, fig in report["functions"].items():
        out.append(_target(f"{name} cold start", fig.get("cold_start_ms"), COLD_START_TARGET_MS, "ms"))
    for name, fig in report["functions"].items():
        out.append(_target(f"{name} RSS", fig.get("rss_mb"), RSS_BUDGET_MB[name], "MB"))
    return out


def _target(what: str, value: float | None, limit: float, unit: str) -> dict[str, Any]:
    ok = value is not None and value == value and value <= limit
    return {"target": what, "value": value, "limit": limit, "unit": unit, "result": "PASS" if ok else "MISS"}


def assemble(
    levels: Sequence[LevelStats],
    inprocess_s: Sequence[float],
    rss_mb: Mapping[str, float],
    cold_start: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON report: figures keyed by concurrency ("1", "8", "32") and by function, plus targets."""
    floor = [x * 1000 for x in inprocess_s]
    inprocess_ms = _r(percentile(floor, 50))
    report: dict[str, Any] = {
        "meta": dict(meta),
        "concurrency": {str(lv.concurrency): {**lv.figures(), "inprocess_ms": inprocess_ms} for lv in levels},
        "inprocess": {
            "inprocess_ms": inprocess_ms,
            "p50_ms": inprocess_ms,
            "p95_ms": _r(percentile(floor, 95)),
            "p99_ms": _r(percentile(floor, 99)),
            "count": len(floor),
        },
        "functions": {
            name: {
                "rss_mb": rss_mb.get(name),
                "rss_budget_mb": RSS_BUDGET_MB.get(name),
                "cold_start_ms": None,
                **cold_start.get(name, {}),
            }
            for name in meta.get("functions", FUNCTIONS)
        },
    }
    report["targets"] = targets(report)
    return report


def render(report: Mapping[str, Any]) -> str:
    """A readable table of the report."""
    meta = report["meta"]
    lines = [
        f"zerorec bench serve: {meta.get('mode', '?')}, topology {meta.get('topology', 'per-service')}, "
        f"load average {meta.get('load_avg')}"
    ]
    lines.append(
        f"POST /recommend, top {report['meta'].get('n')} of {report['meta'].get('candidates')} candidates"
    )
    lines.append(
        f"{'conc':>5} {'req':>6} {'err':>4} {'degr':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'rps':>8}"
    )
    for c, f in report["concurrency"].items():
        lines.append(
            f"{c:>5} {f['requests']:>6} {f['errors']:>4} {f['degraded']:>5} {f['p50_ms']:>8} "
            f"{f['p95_ms']:>8} {f['p99_ms']:>8} {f['rps']:>8}"
        )
    for c, f in report["concurrency"].items():
        stages = "  ".join(f"{k} {v}" for k, v in f["stage_p50_ms"].items())
        lines.append(f"  stages p50 at {c}: {stages}")
        cpu = "  ".join(f"{k} {v}" for k, v in f.get("cpu_ms_per_request", {}).items())
        lines.append(f"  CPU ms per request at {c}: {cpu}  (sum {f.get('cpu_ms_per_request_total')})")
        lines.append(f"  CPU ms per request at {c}: {cpu}")
        if m := f.get("metrics"):
            lines.append(
                f"  /metrics at {c}: {m['requests']:.0f} requests, {m['ok']:.0f} ok, {m['degraded']:.0f} "
                f"degraded (bench: {f['ok']} ok, {f['degraded']} degraded): "
                f"{'match' if f['metrics_match'] else 'MISMATCH'}"
            )
    ip = report["inprocess"]
    lines.append(
        f"in-process floor (no HTTP, one process): p50 {ip['p50_ms']} ms  p95 {ip['p95_ms']} ms  "
        f"p99 {ip['p99_ms']} ms  ({ip['count']} requests)"
    )
    lines.append(
        f"{'function':12s} {'RSS MB':>8} {'budget':>7} {'cold start ms':>14} {'of it model load':>17}"
    )
    for name, f in report["functions"].items():
        load = f.get("model_load_ms")
        lines.append(
            f"{name:12s} {f['rss_mb']!s:>8} {f['rss_budget_mb']!s:>7} {f['cold_start_ms']!s:>14} {load!s:>17}"
        )
    for t in report["targets"]:
        lines.append(f"{t['result']:4s}  {t['target']:32s} {t['value']!s:>10} <= {t['limit']} {t['unit']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- load generator


def _request_bytes(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one HTTP/1.1 response (content-length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip().lower()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            parts.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(parts)
    else:
        body = await reader.read()
    return status, body, headers.get("connection") != "close"


async def drive(
    port: int,
    path: str,
    bodies: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    max_requests: int,
    timeout_s: float = 10.0,
) -> LevelStats:
    """`concurrency` keep-alive connections POSTing bodies in turn until duration_s or max_requests."""
    stats = LevelStats(concurrency)
    left = [max_requests]
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker(k: int) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        i = k
        while left[0] > 0 and time.perf_counter() < deadline:
            left[0] -= 1
            req = _request_bytes(path, bodies[i % len(bodies)])
            i += concurrency
            t = time.perf_counter()
            try:
                async with asyncio.timeout(timeout_s):
                    if conn is None:
                        conn = await asyncio.open_connection(HOST, port)
                    conn[1].write(req)
                    status, body, keep = await _read_response(conn[0])
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                stats.errors += 1
                conn = await _close(conn)
                continue
            lat = time.perf_counter() - t
            if not keep:
                conn = await _close(conn)
            if status != 200:
                stats.errors += 1
                continue
            stats.latencies_s.append(lat)
            _note_body(stats, body)
        await _close(conn)

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    stats.wall_s = time.perf_counter() - start
    return stats


async def _close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if conn is not None:
        conn[1].close()
        with contextlib.suppress(OSError):
            await conn[1].wait_closed()
    return None


def _note_body(stats: LevelStats, body: bytes) -> None:
    """Count degraded answers and keep the BFF's per-stage timings."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if doc.get("degraded"):
        stats.degraded += 1
    for stage, ms in (doc.get("timings_ms") or {}).items():
        stats.stages_ms.setdefault(stage, []).append(float(ms))


# ------------------------------------------------------------------------------- processes


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _private_kb(pid: int) -> int:
    """Private_Clean + Private_Dirty (what a forked child does not share with its parent)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def rss_mb(pid: int) -> float | None:
    """The memory of one function's process tree, in MB (None when the process is gone).

    A function is one process (zerorec.runner); should it fork helpers, they share its pages
    copy-on-write, so: its VmRSS plus each descendant's private pages (never a page twice)."""
    try:
        total_kb = _status_kb(pid, "VmRSS")
    except OSError:
        return None
    for child in _descendants(pid):
        with contextlib.suppress(OSError):
            total_kb += _private_kb(child)
    return round(total_kb / 1024, 1)


def rss_sum_mb(pid: int) -> float | None:
    """Plain sum of VmRSS over the tree (counts copy-on-write pages once per process)."""
    try:
        total_kb = _status_kb(pid, "VmRSS")
    except OSError:
        return None
    for child in _descendants(pid):
        with contextlib.suppress(OSError):
            total_kb += _status_kb(child, "VmRSS")
    return round(total_kb / 1024, 1)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def load_average() -> str:
    """The 1/5/15-minute load averages (the machine is shared: read figures with this)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of every function's process tree, and of this (the client's) process."""
    from zerorec.bench_ingest import _cpu_s

    out = {name: _cpu_s(proc.pid) for name, proc in stack.procs.items()}
    out["client"] = time.process_time()
    return out


@dataclass
class Stack:
    """The started functions: name -> (Service, Popen)."""

    lf: Any
    env: dict[str, str]
    log_dir: Path
    procs: dict[str, Any] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.services[name].port}"

    def start(self, names: Sequence[str], timeout_s: float) -> dict[str, float]:
        for name in names:
            svc = self.services[name]
            self.procs[name] = self.lf.spawn(svc, self.env, self.log_dir / f"{name}.log")
        return self.lf.wait_ready(
            {self.services[n]: self.procs[n] for n in names},
            timeout_s,
            {n: self.log_dir / f"{n}.log" for n in names},
        )

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            self.lf.terminate(proc.pid, grace_s=5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def make_stack(
    real: bool,
    log_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    functions: Sequence[str] = FUNCTIONS,
) -> Stack:
    """Services on free ports; the recommender points at the others through ZEROREC_*_URL."""
    lf = _local_functions()
    from zerorec.bench_ingest import free_port

    ports = {name: free_port() for name in functions}
    urls = {f"ZEROREC_{n.upper()}_URL": f"http://{HOST}:{ports[n]}" for n in functions if n != "recommender"}
    env = lf.function_env(
        real, extra={"ZEROREC_RECALL_CANDIDATES": str(CANDIDATES), **urls, **(extra_env or {})}
    )
    stack = Stack(lf, env, log_dir)
    for name in functions:
        stack.services[name] = lf.ff(name, ports[name])
    return stack


def settings_from_env(env: Mapping[str, str]) -> Any:
    """A Settings object for `env` (the functions' environment), not the bench process's own."""
    from zerorec.settings import Settings

    kw = {k[len("ZEROREC_") :].lower(): v for k, v in env.items() if k.startswith("ZEROREC_")}
    return Settings(**{k: v for k, v in kw.items() if k in Settings.model_fields})


# ------------------------------------------------------------------------------- probes


@dataclass
class Probes:
    """One real request per function (for warm-up and cold start), built from a live recall answer."""

    users: list[str]
    bodies: dict[str, tuple[str, bytes]]  # name -> (path, body)
    recall_candidates: int = 0

    @classmethod
    def build(cls, stack: Stack, users: list[str]) -> Probes:
        user = users[0]
        if "pipeline" in stack.services:  # the compact topology: one call does recall .. reranking
            body = {"user_id": user, "n": TOP_N, "candidates": CANDIDATES}
            r = httpx.post(stack.url("pipeline") + "/", json=body, timeout=30)
            r.raise_for_status()
            ids = [i["item_id"] for i in r.json()["items"]]
            bodies = {"pipeline": ("/", body)}
            count = CANDIDATES
        else:
            body = {"user_id": user, "n": CANDIDATES}
            recall = httpx.post(stack.url("recall") + "/", json=body, timeout=30)
            recall.raise_for_status()
            recalled = recall.json()  # a CandidateColumns batch (docs/HOPS.md)
            ids = recalled["item_ids"]
            ranked = {k: recalled[k] for k in ("item_ids", "scores", "channel", "channels")}
            bodies = {
                "recall": ("/", {"user_id": user, "n": CANDIDATES}),
                "ranking": ("/", {"user_id": user, "candidates": recalled}),
                "reranking": ("/", {"user_id": user, "candidates": ranked, "n": TOP_N, "seen": []}),
            }
            count = len(ids)
        bodies.update(
            {
                "user": ("/", {"user_id": user}),
                "item": ("/", {"item_ids": ids[:TOP_N]}),
                "recommender": ("/recommend", {"user_id": user, "n": TOP_N}),
            }
        )
        return cls(users, {k: (p, orjson.dumps(b)) for k, (p, b) in bodies.items()}, count)

    def once(self, stack: Stack, name: str, timeout_s: float = 5.0) -> bool:
        """True when the function answered its real request with 200."""
        path, body = self.bodies[name]
        try:
            r = httpx.post(
                stack.url(name) + path,
                content=body,
                headers={"content-type": "application/json"},
                timeout=timeout_s,
            )
        except httpx.HTTPError:
            return False
        return r.status_code == 200


def cold_starts(stack: Stack, probes: Probes, name: str, runs: int = COLD_STARTS) -> dict[str, Any]:
    """`runs` cold starts of `name`: their median (`cold_start_ms`, None if one failed), every run,
    and the model-load part of the last one (`/health`'s load_ms: fetch, verify, build)."""
    times = [cold_start(stack, probes, name) for _ in range(runs)]
    ok = [t for t in times if t is not None]
    load_ms = None
    with contextlib.suppress(httpx.HTTPError, ValueError):
        load_ms = httpx.get(stack.url(name) + "/health", timeout=5).json().get("load_ms")
    return {
        "cold_start_ms": _r(percentile(ok, 50), 1) if len(ok) == len(times) else None,
        "cold_start_runs_ms": times,
        "model_load_ms": load_ms,
    }


def cold_start(stack: Stack, probes: Probes, name: str, timeout_s: float = 60.0) -> float | None:
    """Stop `name`, start it again and time process start -> first 200 on its real request (ms)."""
    stack.stop(name)
    svc = stack.services[name]
    t0 = time.perf_counter()
    proc = stack.lf.spawn(svc, stack.env, stack.log_dir / f"{name}.log")
    stack.procs[name] = proc
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            return None
        if stack.lf.port_open(svc.port) and probes.once(stack, name, timeout_s=10):
            return round((time.perf_counter() - t0) * 1000, 1)
        time.sleep(0.01)
    return None


# ------------------------------------------------------------------------------- in-process floor


def inprocess_times(
    settings: Any, users: Sequence[str], count: int, topology: str = "per-service"
) -> list[float]:
    """The same requests through the BFF's Recommender with every stage in this process (no HTTP,
    no worker threads): the floor the distributed path is compared to. Seconds per request."""
    from zerorec.api import (
        ItemRequest,
        PipelineRequest,
        RankingRequest,
        RecallRequest,
        RecommendRequest,
        RerankRequest,
        UserRequest,
    )
    from zerorec.bff import Recommender
    from zerorec.online import (
        ItemStage,
        PipelineStage,
        RankingStage,
        RecallStage,
        RerankStage,
        UserStage,
        default_kv,
        load_model,
    )
    from zerorec.serving import json_response
    from zerorec.storage import object_store

    model = load_model(object_store(settings), settings.model_name)
    kv = default_kv(settings)
    recall, ranking = RecallStage(model, kv), RankingStage(model, kv)
    rerank, user, item = RerankStage(model), UserStage(model, kv), ItemStage(model, kv)
    pipeline = PipelineStage(model, kv)
    compact = topology == "compact"
    if compact:  # the BFF calls the pipeline function instead of recall, ranking and reranking
        settings = settings.model_copy(update={"pipeline_url": "http://127.0.0.1:1"})

    def enc(x: Any) -> bytes:
        return json_response(x).body  # as the functions encode it (numpy rows included)

    handlers: dict[str, Callable[[bytes], Any]] = {
        settings.recall_url: lambda b: recall.recall(RecallRequest.model_validate_json(b)),
        settings.ranking_url: lambda b: ranking.score(RankingRequest.model_validate_json(b)),
        settings.reranking_url: lambda b: rerank.rerank(RerankRequest.model_validate_json(b)),
        settings.user_url: lambda b: user.profile(UserRequest.model_validate_json(b).user_id),
        settings.item_url: lambda b: item.lookup(ItemRequest.model_validate_json(b).item_ids),
    }
    if compact:
        handlers = {
            settings.pipeline_url: lambda b: pipeline.recommend(PipelineRequest.model_validate_json(b)),
            settings.user_url: handlers[settings.user_url],
            settings.item_url: handlers[settings.item_url],
        }
    by_port = {httpx.URL(u).port: h for u, h in handlers.items()}

    def handle(request: httpx.Request) -> httpx.Response:
        fn = by_port[request.url.port]
        return httpx.Response(200, content=enc(fn(request.content)))

    async def run() -> list[float]:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
        bff = Recommender(settings, client=client, hot_refresh_s=0)
        out = []
        try:
            for k in range(INPROCESS_WARMUP):  # first calls build validators and touch the model's pages
                await bff.recommend(RecommendRequest(user_id=users[k % len(users)], n=TOP_N))
            for k in range(count):
                t = time.perf_counter()
                resp = await bff.recommend(RecommendRequest(user_id=users[k % len(users)], n=TOP_N))
                out.append(time.perf_counter() - t)
                if resp.degraded:
                    raise RuntimeError(f"in-process pipeline degraded: {resp.degraded}")
        finally:
            await client.aclose()
        return out

    return asyncio.run(run())


# ------------------------------------------------------------------------------- the benchmark


def model_users(settings: Any, limit: int = 200, seed: int = 7) -> list[str]:
    """Real user ids of the published model (a seeded sample)."""
    from zerorec.online import load_model
    from zerorec.storage import object_store

    model = load_model(object_store(settings), settings.model_name)
    ids = sorted(model.rec.data.user_index)
    random.Random(seed).shuffle(ids)
    return ids[:limit]


def run_bench(
    real: bool = False,
    topology: str = "per-service",
    duration_s: float = 10.0,
    max_requests: int = 5000,
    warmup: int = 50,
    inprocess_count: int = 200,
    concurrency: Sequence[int] = CONCURRENCY,
    log: Callable[[str], None] = print,
    train: bool = True,
) -> dict[str, Any]:
    """Start, warm, measure and stop; the assembled report (see `assemble`)."""
    log_dir = Path(tempfile.mkdtemp(prefix="zerorec-bench-serve-"))
    functions = TOPOLOGIES[topology]
    stack = make_stack(real, log_dir, functions=functions)
    mode = "real (Redis, S3)" if real else f"embedded ({stack.env['ZEROREC_KV_STORE']} KV, local objects)"
    log(f"bench: backends {mode}; logs in {log_dir}")
    version = stack.lf.ensure_model(stack.env, train)
    if version is None:
        raise RuntimeError("no model published (run `zerorec train` first)")
    settings = settings_from_env(stack.env)
    users = model_users(settings)
    log(f"bench: model {settings.model_name} {version}, {len(users)} users sampled")
    try:
        took = stack.start(functions, timeout_s=180)
        log("bench: started " + ", ".join(f"{k} {v}s" for k, v in took.items()))
        probes = Probes.build(stack, users)
        bodies = [orjson.dumps({"user_id": u, "n": TOP_N}) for u in users]
        port = stack.services["recommender"].port
        log(f"bench: warm-up ({warmup} requests; recall gives {probes.recall_candidates} candidates)")
        asyncio.run(drive(port, "/recommend", bodies, 4, 60.0, warmup))
        levels = []
        for c in concurrency:
            scraped = scrape(stack.url("recommender"))
            cpu0 = cpu_seconds(stack)
            lv = asyncio.run(drive(port, "/recommend", bodies, c, duration_s, max_requests))
            cpu1 = cpu_seconds(stack)
            lv.cpu_s = {k: cpu1[k] - cpu0[k] for k in cpu0}
            lv.metrics = dict(recommend_counts(scraped, scrape(stack.url("recommender"))))
            f = lv.figures()
            log(
                f"bench: concurrency {c}: {f['ok']} ok, {f['errors']} errors, p50 {f['p50_ms']} ms, "
                f"p99 {f['p99_ms']} ms, {f['rps']} rps (load {load_average()})"
            )
            levels.append(lv)
        rss = {name: rss_mb(stack.procs[name].pid) for name in functions}
        rss_sum = {name: rss_sum_mb(stack.procs[name].pid) for name in functions}
        log("bench: RSS MB " + ", ".join(f"{k} {v}" for k, v in rss.items()))
        cold: dict[str, dict[str, Any]] = {}
        for name in functions:
            cold[name] = cold_starts(stack, probes, name)
            log(
                f"bench: {name} cold starts {cold[name]['cold_start_runs_ms']} ms "
                f"(model load {cold[name]['model_load_ms']} ms)"
            )
    finally:
        stack.stop_all()
    log(f"bench: in-process floor ({inprocess_count} requests)")
    floor = inprocess_times(settings, users, inprocess_count, topology)
    meta = {
        "mode": mode,
        "topology": topology,
        "functions": list(functions),
        "model": settings.model_name,
        "version": version,
        "n": TOP_N,
        "candidates": probes.recall_candidates,
        "duration_s": duration_s,
        "max_requests": max_requests,
        "load_avg": load_average(),
        "cpus": os.cpu_count(),
        "client": "raw asyncio HTTP/1.1, keep-alive, in the bench process",
    }
    report = assemble(levels, floor, rss, cold, meta)
    for name, mb in rss_sum.items():
        report["functions"][name]["rss_sum_mb"] = mb
    return report


def main(
    real: bool = False,
    json_path: Path | None = None,
    duration_s: float = 10.0,
    max_requests: int = 5000,
    train: bool = True,
    topology: str = "per-service",
) -> int:
    """CLI body: run, print the table, write the JSON; 0 when every target passed, else 1."""
    report = run_bench(
        real=real, duration_s=duration_s, max_requests=max_requests, train=train, topology=topology
    )
    print(render(report))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        print(f"wrote {json_path}")
    return 0 if all(t["result"] == "PASS" for t in report["targets"]) else 1
