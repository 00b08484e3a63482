"""Container benchmark: each function's cold start in its image at its manifest's limits, and the
seed's whole test environment at once.

`zerorec bench containers [--json FILE] [--runs 3] [--cpu-sweep 0.2,0.5,1,2]` needs the images
(`./local/task images`) and the real servers (`local/infra.sh start`). With the model LATEST of
ZEROREC_MODEL_NAME in the real S3 (trained with `zerorec train` on synthetic data if there is none):

1. per function: `runs` cold starts of its container as Knative runs it (local/containers.py:
   the manifest's CPU and memory limits, read-only root, non-root): `podman run` -> first 200 on
   /health (`ready_ms`, the Knative readiness) and -> first 200 on a real request
   (`cold_start_ms`, online functions); the median of each, and RSS after the first answer;
2. `--cpu-sweep`: recall's and ranking's cold start at other CPU limits (the trade-off of the CPU
   limit a manifest declares);
3. every always-on function in its container at its limits at the same time, `POST /recommend`
   at concurrency 1 and 8 (latency, throughput, CPU per request of each container);
4. the image sizes.
Prints the figures; `--json FILE` writes them (per function `cold_start_ms`, `ready_ms`, `rss_mb`,
`cpu_limit`, `memory_limit`; per image `image_mb`).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from zerorec.bench_ingest import free_port
from zerorec.bench_serve import CANDIDATES, TOP_N, Probes, drive, load_average, settings_from_env

REPO = Path(__file__).resolve().parents[2]
ONLINE = ("recall", "ranking", "reranking", "user", "item")
EVENTS = ("behavior", "consumer", "worker")
READY_TARGET_MS = 1500.0


def _local() -> tuple[Any, Any]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from local import containers, functions

    return containers, functions


class _Urls:
    def __init__(self, running: dict[str, Any]) -> None:
        self.running = running

    def url(self, name: str) -> str:
        return self.running[name].url()


def _median(xs: Sequence[float | None]) -> float | None:
    ok = [x for x in xs if x is not None]
    return round(statistics.median(ok), 1) if ok and len(ok) == len(xs) else None


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used, from /proc (clock ticks of 1/100 s)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


class Bench:
    """The running environment: the local servers' env, the model, the containers started."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.ct, self.lf = _local()
        self.log = log
        self.infra = self.lf.infra_env()
        # API keys as a cluster's Secrets would give them (behavior and item refuse to start without)
        self.env = {
            **self.infra,
            "ZEROREC_RECALL_CANDIDATES": str(CANDIDATES),
            "ZEROREC_BEHAVIOR_API_KEY": "bench-behavior-key",
            "ZEROREC_ADMIN_API_KEY": "bench-admin-key",
        }
        self.running: dict[str, Any] = {}

    def ensure_model(self) -> str:
        version = self.lf.ensure_model({**self.lf.function_env(real=True), **self.env}, train=True)
        if version is None:
            raise RuntimeError("no model in S3 and training failed")
        return version

    def start(self, name: str, cpus: float | None = None, extra: dict[str, str] | None = None) -> Any:
        spec = self.ct.spec_for(name)
        if cpus is not None:
            spec = self.ct.ContainerSpec(**{**spec.__dict__, "cpu_limit": f"{int(cpus * 1000)}m"})
        c = self.ct.run_container(spec, free_port(), self.ct.backend_env(self.env, spec, extra or {}))
        self.running[name] = c
        return c

    def stop(self, name: str) -> None:
        c = self.running.pop(name, None)
        if c is not None:
            c.stop()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def urls(self) -> dict[str, str]:
        return {f"ZEROREC_{n.upper()}_URL": self.running[n].url() for n in ONLINE if n in self.running}


def first_answer(c: Any, probes: Probes, urls: _Urls, timeout_s: float = 60.0) -> float | None:
    """ms from `podman run` to the first 200 on the function's real request (None: none in time)."""
    while time.perf_counter() - c.started < timeout_s:
        if probes.once(urls, c.name, timeout_s=10):
            return round((time.perf_counter() - c.started) * 1000, 1)
        time.sleep(0.01)
    return None


def cold_start(bench: Bench, name: str, probes: Probes | None, cpus: float | None = None) -> dict[str, Any]:
    """One cold start of `name`'s container: ready_ms, cold_start_ms (first real answer), rss_mb."""
    extra = bench.urls() if name == "recommender" else {}
    c = bench.start(name, cpus, extra)
    ready = bench.ct.wait_health(c, timeout_s=120, tcp=c.spec.health_path is None)
    first = ready
    if ready is not None and probes is not None and name in probes.bodies:
        first = first_answer(c, probes, _Urls(bench.running))
    rss = c.rss_mb()
    if ready is None:
        bench.log(f"  {name}: not ready\n{c.logs()}")
    bench.stop(name)
    return {"ready_ms": ready, "cold_start_ms": first, "rss_mb": rss}


def measure_function(bench: Bench, name: str, probes: Probes | None, runs: int) -> dict[str, Any]:
    spec = bench.ct.spec_for(name)
    results = [cold_start(bench, name, probes) for _ in range(runs)]
    out = {
        "image": spec.image,
        "cpu_limit": spec.cpu_limit,
        "memory_limit": spec.memory_limit,
        "ready_ms": _median([r["ready_ms"] for r in results]),
        "cold_start_ms": _median([r["cold_start_ms"] for r in results]),
        "runs_ready_ms": [r["ready_ms"] for r in results],
        "runs_cold_start_ms": [r["cold_start_ms"] for r in results],
        "rss_mb": max((r["rss_mb"] or 0.0) for r in results),
    }
    bench.log(
        f"bench: {name:20s} {spec.cpu_limit:>6s} {spec.memory_limit:>6s}  ready {out['ready_ms']} ms "
        f"first answer {out['cold_start_ms']} ms  RSS {out['rss_mb']} MB  runs {out['runs_ready_ms']}"
    )
    return out


def environment(bench: Bench, users: list[str], duration_s: float, max_requests: int) -> dict[str, Any]:
    """Every always-on function at its limits at once; /recommend at concurrency 1 and 8."""
    for name in ONLINE:
        bench.start(name)
    for name in ONLINE:
        if bench.ct.wait_health(bench.running[name], timeout_s=120) is None:
            raise RuntimeError(f"{name} not ready:\n{bench.running[name].logs()}")
    rec = bench.start("recommender", extra=bench.urls())
    if bench.ct.wait_health(rec, timeout_s=60) is None:
        raise RuntimeError(f"recommender not ready:\n{rec.logs()}")
    bodies = [orjson.dumps({"user_id": u, "n": TOP_N}) for u in users]
    asyncio.run(drive(rec.port, "/recommend", bodies, 2, 60.0, 40))  # warm-up
    levels = {}
    for conc in (1, 8):
        cpu0 = {n: _cpu_s(c.pid()) for n, c in bench.running.items()}
        lv = asyncio.run(drive(rec.port, "/recommend", bodies, conc, duration_s, max_requests))
        cpu1 = {n: _cpu_s(c.pid()) for n, c in bench.running.items()}
        lv.cpu_s = {n: cpu1[n] - cpu0[n] for n in cpu0}
        f = lv.figures()
        levels[str(conc)] = f
        total = round(sum(f["cpu_ms_per_request"].values()), 2)
        bench.log(
            f"bench: environment concurrency {conc}: {f['ok']} ok, {f['errors']} errors, {f['degraded']} "
            f"degraded, p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, {f['rps']} rps, CPU {total} ms/request "
            f"(load {load_average()})"
        )
    rss = {n: c.rss_mb() for n, c in bench.running.items()}
    bench.log("bench: environment RSS MB " + ", ".join(f"{k} {v}" for k, v in rss.items()))
    limits = {n: (c.spec.cpu_limit, c.spec.memory_limit) for n, c in bench.running.items()}
    bench.stop_all()
    return {"levels": levels, "rss_mb": rss, "limits": limits}


def run(
    runs: int = 3,
    cpu_sweep: Sequence[float] = (),
    duration_s: float = 10.0,
    max_requests: int = 2000,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    bench = Bench(log)
    ct = bench.ct
    missing = [i for i in (ct.SERVE_IMAGE, ct.JOBS_IMAGE) if not ct.image_exists(f"{i}:latest")]
    if missing:
        raise RuntimeError(f"images missing: {missing}; build them with ./local/task images")
    version = bench.ensure_model()
    from zerorec.bench_serve import model_users

    settings = settings_from_env({**bench.lf.function_env(real=True), **bench.env})
    users = model_users(settings)
    log(f"bench: model {settings.model_name} {version}; load {load_average()}")
    report: dict[str, Any] = {
        "images": {i: {"image_mb": ct.image_mb(f"{i}:latest")} for i in (ct.SERVE_IMAGE, ct.JOBS_IMAGE)},
        "functions": {},
        "meta": {"model": settings.model_name, "version": version, "runs": runs},
    }
    log("bench: images " + ", ".join(f"{k} {v['image_mb']} MB" for k, v in report["images"].items()))
    try:
        # The chain the probes need stays up while each function restarts (its own container
        # included: a second instance answers the probe-building request, then stops).
        for name in ONLINE:
            bench.start(name)
        for name in ONLINE:
            ct.wait_health(bench.running[name], timeout_s=120)
        probes = Probes.build(_Urls(bench.running), users)
        chain = dict(bench.running)
        for name in (*ONLINE, "recommender", "recommender-grpc", *EVENTS):
            bench.running = {k: v for k, v in chain.items() if k != name}
            report["functions"][name] = measure_function(bench, name, probes, runs)
        bench.running = chain
        bench.stop_all()
        for name in ("model-training", "feature-engineering", "vector-generation", "flink-realtime"):
            report["functions"][name] = measure_function(bench, name, None, 1)
        if cpu_sweep:
            report["cpu_sweep"] = {}
            for name in ("recall", "ranking"):
                for cpus in cpu_sweep:
                    r = [cold_start(bench, name, None, cpus) for _ in range(runs)]
                    ready = _median([x["ready_ms"] for x in r])
                    report["cpu_sweep"].setdefault(name, {})[f"{cpus:g}"] = ready
                    log(
                        f"bench: {name} at {cpus:g} CPU: ready {ready} ms (runs {[x['ready_ms'] for x in r]})"
                    )
        report["environment"] = environment(bench, users, duration_s, max_requests)
    finally:
        bench.stop_all()
    report["meta"]["load_avg"] = load_average()
    report["targets"] = [
        {
            "what": f"{n} ready within {READY_TARGET_MS:.0f} ms at its limits",
            "value": f["ready_ms"],
            "result": "PASS" if f["ready_ms"] is not None and f["ready_ms"] <= READY_TARGET_MS else "MISS",
        }
        for n, f in report["functions"].items()
        if n in (*ONLINE, "recommender")
    ]
    return report


def main(json_path: Path | None = None, runs: int = 3, cpu_sweep: Sequence[float] = ()) -> int:
    report = run(runs=runs, cpu_sweep=cpu_sweep)
    for t in report["targets"]:
        print(f"{t['result']}: {t['what']} ({t['value']} ms)")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        print(f"wrote {json_path}")
    return 0
