"""zerorec.runner: functions-framework's ASGI app under uvicorn in one process (no fork)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from fn_stack import free_port
from zerorec.runner import command

SOURCE = """
import functions_framework.aio
from starlette.responses import JSONResponse


@functions_framework.aio.http
async def hello(request):
    return JSONResponse({"path": request.url.path})
"""


def test_serves_an_aio_function_in_one_process(tmp_path: Path) -> None:
    source = tmp_path / "main.py"
    source.write_text(SOURCE)
    port = free_port()
    proc = subprocess.Popen(command("hello", source, "127.0.0.1", port), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/some/path", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "the runner did not start"
                time.sleep(0.1)
        assert r.status_code == 200 and r.json() == {"path": "/some/path"}
        children = (
            Path(f"/proc/{proc.pid}/task").exists()
            and subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        )
        assert not children, "one process: no worker forked"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_a_missing_target_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNCTION_")}
    r = subprocess.run(
        [sys.executable, "-m", "zerorec.runner"], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 2 and "--target" in r.stderr
    missing = str(tmp_path / "main.py")
    r = subprocess.run(
        [sys.executable, "-m", "zerorec.runner", "--target", "f", "--source", missing],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 2 and f"--source {missing}: no such file" in r.stderr
