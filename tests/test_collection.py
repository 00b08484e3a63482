"""Test folders can be collected together in one pytest run (their conftest modules do not clash)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_function_bff_core_and_pipeline_folders_collect_in_one_run() -> None:
    folders = ["tests/functions", "tests/bff", "tests/core", "tests/pipeline", "tests/events"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *folders],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " error" not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]
