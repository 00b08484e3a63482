"""The main job's script (local/run_demo.py) end to end on the embedded backends: a tiny published
model, every function as its own process on a shifted port map, a sample recommendation, a click
through the behavior function, the clicked item gone, curl lines; then `local/functions.py stop`."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "functions"))

from fn_bundles import publish, train_tiny  # noqa: E402

BASE_PORTS = (8081, 8082, 8083, 8084, 8085, 8086, 8087, 8088, 8095, 10071, 10072)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_offset() -> int:
    """A port-map shift with all ten ports free (below the ephemeral range)."""
    rng = random.Random()
    for _ in range(50):
        offset = rng.randrange(12000, 22000)
        if all(_free(p + offset) for p in BASE_PORTS):
            return offset
    pytest.skip("no free port map found")


def test_run_demo_end_to_end(tmp_path: Path) -> None:
    from zerorec.storage.objects_local import LocalObjectStore

    rec, _, _, _ = train_tiny()
    version = publish(LocalObjectStore(tmp_path / "objects"), "recommender", rec.to_files())
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROREC_")}
    env.update(
        ZEROREC_DATA_DIR=str(tmp_path),
        ZEROREC_INFRA_DIR=str(tmp_path / "infra"),
        ZEROREC_PORT_OFFSET=str(free_offset()),
        ZEROREC_DEADLINE_MS="3000",
        ZEROREC_TOTAL_BUDGET_MS="8000",
    )
    try:
        run = subprocess.run(
            [sys.executable, "local/run_demo.py", "--timeout", "90"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-4000:]
        assert f"model already published: version {version}" in out
        assert "Recommendation: user" in out and "degraded: none" in out
        assert "is gone from the next recommendation" in out
        assert "/recommend -H 'content-type: application/json'" in out and "/events" in out
        assert "./local/task down" in out
        status = subprocess.run(
            [sys.executable, "local/functions.py", "status"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert status.returncode == 0, status.stdout  # still serving after the script returned
    finally:
        subprocess.run(
            [sys.executable, "local/functions.py", "stop"],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=120,
        )
