"""zerorec bench state on a small run: a redis-server of its own, the consumer's batch path."""

from __future__ import annotations

import json
import shutil

import pytest
from zerorec.bench_state import key_kind, main, run_state_benchmark


def test_key_kinds_hide_the_generated_ids() -> None:
    assert key_kind("u:{u0001234}") == "u:{<user>}"
    assert key_kind("user:u0001234:recent") == "user:<user>:recent"
    assert key_kind("evt:0b0e4a1c-5d4e-4f7a-9b1c-0123456789ab") == "evt:<event>"
    assert key_kind("item:{i000042}") == "item:{<item>}"


def test_bad_arguments_are_a_clear_exit() -> None:
    with pytest.raises(SystemExit, match="must be positive"):
        run_state_benchmark(0)
    with pytest.raises(SystemExit, match="redis://"):
        run_state_benchmark(10, redis_url="redis-cluster://127.0.0.1:1")
    with pytest.raises(SystemExit):
        main([])  # --users is required


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_small_run_reports_bytes_per_user_by_key_kind(tmp_path) -> None:
    out = tmp_path / "state.json"
    args = ["--users", "2000", "--events-per-user", "3", "--items", "500", "--no-progress"]
    args += ["--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["users"] == 2000 and report["events"] == 6000
    assert set(report["per_kind"]) == {"u:{<user>}"}  # one key per user, no key per event
    # a record of 3 items, a few categories and 3 fingerprints, plus Redis's per-key overhead
    assert 120 < report["bytes_per_user"] < 600
    assert report["gib_per_million_users"] == pytest.approx(report["bytes_per_user"] * 1e6 / 2**30, rel=1e-3)
