"""Helpers of the serving-function tests (a tiny bundle's holder, function processes on free ports).

Kept out of conftest.py so test modules import them by a unique name: `from conftest import ...`
breaks when pytest collects two test folders in one run (every folder's conftest is `conftest`).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from local.functions import Service, spawn, terminate, wait_ready  # noqa: E402

SERVING = ("recall", "ranking", "reranking", "user", "item")


@dataclass
class Tiny:
    files: dict[str, bytes]
    interactions: pd.DataFrame
    items: pd.DataFrame
    info: dict[str, Any]

    def history(self, user_id: str) -> list[str]:
        rows = self.interactions[self.interactions.user_id == user_id]
        return rows.item_id.tolist()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """Running processes: name -> base URL; logs under `logs`."""

    urls: dict[str, str]
    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def kill(self, name: str) -> None:
        terminate(self.procs[name].pid, grace_s=5)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


def start_stack(services: list[Service], env: dict[str, str], logs: Path, timeout_s: float = 120) -> Stack:
    """Spawn every service, wait for its readiness; the caller stops them (stop_stack)."""
    stack = Stack({s.name: f"http://127.0.0.1:{s.port}" for s in services if s.port}, env, logs)
    try:
        for svc in services:
            stack.procs[svc.name] = spawn(svc, env, logs / f"{svc.name}.log")
            stack.services[svc.name] = svc
        wait_ready(
            {stack.services[n]: p for n, p in stack.procs.items()},
            timeout_s,
            {n: logs / f"{n}.log" for n in stack.procs},
        )
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    for proc in stack.procs.values():
        terminate(proc.pid, grace_s=5)
