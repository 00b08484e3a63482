"""The single-process trainer refuses, with a message, what would not fit in memory (issue 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner
from zerorec import resources
from zerorec.cli import app
from zerorec.data import SyntheticConfig, generate
from zerorec.data.interactions import InteractionData
from zerorec.pipeline import PipelineConfig, train_recommender
from zerorec.recall.channels import EASEChannel
from zerorec.resources import (
    MemoryBudget,
    MemoryLimitError,
    available_memory,
    check_training_memory,
    ease_fit_bytes,
    require_memory,
)

REPO = Path(__file__).resolve().parents[2]
MIB = 1024**2


def _proc(tmp_path: Path, cgroup_line: str, available_kb: int = 50_000_000) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_line)
    (proc / "self" / "status").write_text("VmSize:\t  100000 kB\n")
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_kb} kB\n")
    return proc


def test_cgroup_v2_limit_minus_usage(tmp_path):
    root = tmp_path / "cg"
    (root / "app").mkdir(parents=True)
    (root / "app" / "memory.max").write_text(f"{1024 * MIB}\n")
    (root / "app" / "memory.current").write_text(f"{256 * MIB}\n")
    budget = available_memory(root, _proc(tmp_path, "0::/app\n"))
    assert budget.available == 768 * MIB
    assert "memory.max 1.0 GiB" in budget.source


def test_cgroup_v1_limit_and_unlimited_fall_back_to_memavailable(tmp_path):
    root = tmp_path / "cg"
    grp = root / "memory" / "grp"
    grp.mkdir(parents=True)
    (grp / "memory.limit_in_bytes").write_text(f"{2048 * MIB}\n")
    (grp / "memory.usage_in_bytes").write_text(f"{48 * MIB}\n")
    proc = _proc(tmp_path, "4:memory:/grp\n0::/\n")
    assert available_memory(root, proc).available == 2000 * MIB
    (grp / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    budget = available_memory(root, proc)
    assert budget.available == 50_000_000 * 1024
    assert budget.source.startswith("MemAvailable")


def test_memavailable_wins_when_tighter_than_the_cgroup(tmp_path):
    root = tmp_path / "cg"
    (root / "app").mkdir(parents=True)
    (root / "app" / "memory.max").write_text(f"{8192 * MIB}\n")
    (root / "app" / "memory.current").write_text("0\n")
    budget = available_memory(root, _proc(tmp_path, "0::/app\n", available_kb=100 * 1024))
    assert budget.available == 100 * MIB
    assert "MemAvailable" in budget.source


def test_refusal_names_stage_size_limit_and_the_spark_engine():
    budget = MemoryBudget(512 * MIB, "cgroup memory.max 0.5 GiB (0.0 GiB in use)")
    require_memory("EASE fit", 100 * MIB, budget=budget)  # fits: nothing raised
    with pytest.raises(MemoryLimitError) as err:
        require_memory("EASE fit", ease_fit_bytes(30_000), "30,000 items", budget=budget)
    text = str(err.value)
    assert "EASE fit" in text and f"{ease_fit_bytes(30_000) / 1024**3:.1f} GiB" in text
    assert "30,000 items" in text
    assert "cgroup memory.max 0.5 GiB" in text
    assert "--engine spark" in text


def test_training_is_refused_before_any_fit(monkeypatch):
    """A 10 MiB budget: train_recommender refuses before EASE (or anything native) runs."""
    monkeypatch.setattr(resources, "available_memory", lambda: MemoryBudget(10 * MIB, "test limit 10 MiB"))

    def must_not_run(self, data):
        raise AssertionError("EASE was fitted although the guard should have refused")

    monkeypatch.setattr(EASEChannel, "fit", must_not_run)
    interactions, items = generate(SyntheticConfig(n_users=200, n_items=800, mean_interactions=20))
    with pytest.raises(MemoryLimitError, match="test limit 10 MiB"):
        train_recommender(interactions, items, PipelineConfig(ranker_epochs=1))


def test_estimates_grow_with_the_catalogue_and_fit_small_data():
    interactions, items = generate(SyntheticConfig(n_users=100, n_items=300, mean_interactions=10))
    est = check_training_memory(interactions, items, PipelineConfig())  # real machine: fits
    assert set(est) == {"EASE fit", "ALS fit", "item-CF fit", "ranker training rows"}
    assert ease_fit_bytes(30_000) > 60 * ease_fit_bytes(3_000)  # quadratic in items


def test_ease_fit_itself_refuses(monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: MemoryBudget(1 * MIB, "test limit 1 MiB"))
    interactions, items = generate(SyntheticConfig(n_users=100, n_items=400, mean_interactions=15))
    with pytest.raises(MemoryLimitError, match="EASE fit"):
        EASEChannel().fit(InteractionData.from_frame(interactions, items))


def test_cli_train_refuses_with_a_message_and_exit_code(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "available_memory", lambda: MemoryBudget(1 * MIB, "test limit 1 MiB"))
    monkeypatch.setenv("ZEROREC_DATA_DIR", str(tmp_path / "data"))
    interactions, _ = generate(SyntheticConfig(n_users=100, n_items=300, mean_interactions=10))
    path = tmp_path / "log.csv"
    interactions[["user_id", "item_id", "timestamp"]].to_csv(path, index=False)
    result = CliRunner().invoke(app, ["train", "--dataset", str(path)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "--engine spark" in result.output
    assert "Traceback" not in result.output


def test_cli_train_bad_file_keeps_its_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROREC_DATA_DIR", str(tmp_path / "data"))
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id\n1,2\n")
    result = CliRunner().invoke(app, ["train", "--dataset", str(bad)])
    assert result.exit_code == 2
    assert "timestamp" in result.output and str(bad) in result.output
    broken = tmp_path / "latin1.csv"
    broken.write_bytes("user_id,item_id,timestamp\n1,caf\xe9,3\n".encode("latin-1"))
    result = CliRunner().invoke(app, ["train", "--dataset", str(broken)])
    assert result.exit_code != 0


def test_a_real_process_exits_with_a_message_never_a_signal(tmp_path):
    """`zerorec train` in its own process, its budget cut by configuration: exit 2 and a line that
    says why (the 30k-item SIGSEGV of issue 11, reproduced with `ulimit -v`, takes this path)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO)]),
        "ZEROREC_DATA_DIR": str(tmp_path / "data"),
        "ZEROREC_TRAIN_MEMORY_FRACTION": "0.000001",
    }
    out = subprocess.run(
        [sys.executable, "-m", "zerorec.cli", "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "needs about" in out.stderr and "--engine spark" in out.stderr
