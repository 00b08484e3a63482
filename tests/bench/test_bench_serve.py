"""zerorec.bench_serve's pure parts: percentiles, the load generator against a tiny fake server,
figure assembly, JSON keys and PASS/MISS, RSS from /proc. No timing assertions."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest
from zerorec import bench_serve as bs


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpy(n: int) -> None:
    xs = np.random.default_rng(n).exponential(10, n).tolist()
    for q in (0, 50, 95, 99, 100):
        assert bs.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(bs.percentile([], 50))


async def _fake_server(bodies: list[tuple[int, bytes, bool]]) -> tuple[asyncio.Server, int, list[bytes]]:
    """Answers each request with the next (status, body, chunked); records request bodies."""
    seen: list[bytes] = []
    queue = iter(bodies * 1000)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                seen.append(await reader.readexactly(length))
                status, body, chunked = next(queue)
                if chunked:
                    half = len(body) // 2
                    payload = (
                        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p)
                        + b"0\r\n\r\n"
                    )
                    writer.write(b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n" % status + payload)
                else:
                    writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, bs.HOST, 0)
    return server, server.sockets[0].getsockname()[1], seen


def test_drive_counts_ok_errors_degraded_and_stops_at_max_requests() -> None:
    ok = orjson.dumps({"degraded": [], "timings_ms": {"recall": 3.0, "total": 10.0}})
    degraded = orjson.dumps({"degraded": ["ranking_timeout"], "timings_ms": {"recall": 5.0, "total": 20.0}})
    answers = [(200, ok, False), (200, degraded, True), (500, b'{"error": "x"}', False), (200, ok, True)]

    async def run() -> tuple[bs.LevelStats, list[bytes]]:
        server, port, seen = await _fake_server(answers)
        async with server:
            stats = await bs.drive(
                port, "/recommend", [b'{"user_id": "a"}', b'{"user_id": "b"}'], 4, 30.0, 40
            )
        return stats, seen

    stats, seen = asyncio.run(run())
    assert len(seen) == 40 and set(seen) == {b'{"user_id": "a"}', b'{"user_id": "b"}'}
    assert stats.errors == 10 and len(stats.latencies_s) == 30 and stats.degraded == 10
    assert sorted(stats.stages_ms) == ["recall", "total"] and len(stats.stages_ms["total"]) == 30
    fig = stats.figures()
    assert fig["requests"] == 40 and fig["ok"] == 30 and fig["errors"] == 10 and fig["degraded"] == 10
    assert fig["rps"] > 0 and 0 < fig["p50_ms"] <= fig["p95_ms"] <= fig["p99_ms"]
    assert fig["stage_p50_ms"]["total"] == pytest.approx(10.0)


def test_drive_counts_a_dead_server_as_errors() -> None:
    from zerorec.bench_ingest import free_port

    stats = asyncio.run(bs.drive(free_port(), "/recommend", [b"{}"], 2, 5.0, 6))
    assert stats.errors == 6 and stats.latencies_s == []
    assert math.isnan(stats.figures()["p99_ms"])


def _level(c: int, ms: list[float]) -> bs.LevelStats:
    return bs.LevelStats(c, [x / 1000 for x in ms], wall_s=1.0)


def test_assemble_keys_and_targets() -> None:
    levels = [_level(1, [5.0] * 100), _level(8, [10.0] * 98 + [30.0, 40.0]), _level(32, [50.0] * 10)]
    rss = {"recommender": 100.0, "recall": 600.0, "ranking": 300.0, "reranking": 200.0, "user": 90.0}
    cold = {
        name: {"cold_start_ms": ms, "cold_start_runs_ms": [ms] * 3, "model_load_ms": ms / 3}
        for name, ms in {
            "recall": 900.0,
            "ranking": 1200.0,
            "reranking": 500.0,
            "user": 400.0,
            "item": 300.0,
        }.items()
    }
    report = bs.assemble(levels, [0.004, 0.006], rss, cold, {"mode": "test", "n": 20, "candidates": 500})
    report = json.loads(json.dumps(report))  # what --json writes
    assert set(report["concurrency"]) == {"1", "8", "32"}
    for fig in report["concurrency"].values():
        assert {"p50_ms", "p95_ms", "p99_ms", "rps", "inprocess_ms"} <= set(fig)
    assert report["concurrency"]["1"]["rps"] == 100.0 and report["concurrency"]["1"]["inprocess_ms"] == 5.0
    assert report["concurrency"]["8"]["p99_ms"] == pytest.approx(30.1)
    assert set(report["functions"]) == set(bs.FUNCTIONS)
    for fig in report["functions"].values():
        assert {"rss_mb", "cold_start_ms"} <= set(fig)
    assert report["functions"]["recall"]["cold_start_runs_ms"] == [900.0] * 3
    result = {t["target"]: t["result"] for t in report["targets"]}
    assert result["p99 at concurrency 8"] == "MISS"
    assert result["recall cold start"] == "PASS" and result["ranking cold start"] == "MISS"
    assert result["recommender cold start"] == "MISS"  # not measured: never a PASS
    assert result["recall RSS"] == "MISS" and result["ranking RSS"] == "PASS"
    assert result["item RSS"] == "MISS" and result["recommender RSS"] == "PASS"
    text = bs.render(report)
    assert "MISS  p99 at concurrency 8" in text and "in-process floor" in text


def test_p99_within_target_passes() -> None:
    report = bs.assemble([_level(8, [20.0] * 100)], [0.01], {}, {}, {})
    assert next(t for t in report["targets"] if t["target"].startswith("p99"))["result"] == "PASS"


def test_rss_of_a_process_tree() -> None:
    code = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while not bs._descendants(parent.pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        own = bs.rss_mb(os.getpid())
        tree = bs.rss_mb(parent.pid)
        assert own and own > 1 and tree and tree > 1
        assert (bs.rss_sum_mb(parent.pid) or 0) >= tree
    finally:
        for child in bs._descendants(parent.pid):
            os.kill(child, 9)
        parent.kill()
        parent.wait()
    assert bs.rss_mb(parent.pid) is None
