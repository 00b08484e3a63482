"""Training benchmark: wall time and peak RSS of `zerorec train` (driver, JVM and Python workers).

Generates a synthetic log (`zerorec.training.scale_data`), runs `zerorec train` on it in a child
process and samples the resident memory of the child's whole process tree (the Python driver, the
Spark JVM with its executors in local mode, Spark's Python workers) every `--period` seconds from
/proc. Prints one JSON line: interactions, wall seconds, microseconds per interaction, peak RSS
(sum over the tree, and the largest process), the stage seconds `zerorec train` reported.
Run: `python -m zerorec.training.bench --interactions 1000000 --users 50000 --items 10000 --engine spark`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_rss(root: int) -> tuple[int, int]:
    """(sum, max) resident bytes of `root` and all its descendants."""
    tree = _children()
    todo, total, largest = [root], 0, 0
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        try:
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def run_measured(cmd: Sequence[str], env: dict[str, str], period: float = 0.5) -> dict[str, object]:
    """Run `cmd`, sampling its process tree's RSS; wall seconds, peaks, exit code, output tail."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak_sum = peak_one = 0
        while child.poll() is None:
            total, largest = tree_rss(child.pid)
            peak_sum, peak_one = max(peak_sum, total), max(peak_one, largest)
            time.sleep(period)
        wall = time.monotonic() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    return {
        "exit": child.returncode,
        "wall_s": wall,
        "peak_rss": peak_sum,
        "peak_rss_one": peak_one,
        "output": text,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from zerorec.training.scale_data import generate_scale, write_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, required=True)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--engine", choices=("local", "spark"), default="spark")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and bundles here")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="zerorec-bench-train-"))
    data_dir = work / f"data-{args.interactions}"
    if not (data_dir / "items.csv").exists():
        frame, items = generate_scale(args.users, args.items, args.interactions)
        write_dataset(frame, items, data_dir, "parquet" if args.engine == "spark" else "csv")
    env = {**os.environ, "ZEROREC_DATA_DIR": str(work / "zerorec")}
    cmd = [sys.executable, "-m", "zerorec.cli", "train", "--dataset", str(data_dir), "--engine", args.engine]
    if args.engine == "spark":
        cmd += ["--master", args.master]
    result = run_measured(cmd, env)
    lines = str(result.pop("output")).strip().splitlines()
    report: dict[str, object] = {}
    with contextlib.suppress(ValueError, IndexError):  # no JSON line: the run failed, see the tail
        report = json.loads(lines[-1])
    n = args.interactions
    out = {
        "engine": args.engine,
        "master": args.master if args.engine == "spark" else None,
        "interactions_requested": n,
        "users": args.users,
        "items": args.items,
        "exit": result["exit"],
        "wall_s": round(float(result["wall_s"]), 1),
        "us_per_interaction": round(float(result["wall_s"]) / n * 1e6, 2),
        "peak_rss_mb": round(int(result["peak_rss"]) / 2**20),
        "peak_rss_largest_process_mb": round(int(result["peak_rss_one"]) / 2**20),
        "stage_seconds": report.get("stage_seconds"),
        "load_average_after": os.getloadavg(),
    }
    if result["exit"] != 0:
        out["output_tail"] = lines[-15:]
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if result["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
