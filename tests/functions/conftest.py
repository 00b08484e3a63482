"""Fixtures for the serving functions: a tiny trained bundle, functions-framework processes.

The bundle is trained once per session with C's API (zerorec.pipeline.train_recommender) on a small
synthetic set; processes start with local/functions.py's helpers on free ports.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fn_bundles import publish, train_tiny  # noqa: E402

from local.functions import Service, ff, function_env, spawn, terminate, wait_ready  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    """A bundle's files trained in seconds on the synthetic generator (torch is used here only)."""
    rec, info, interactions, items = train_tiny()
    return Tiny(rec.to_files(), interactions, items, info)


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


@pytest.fixture(scope="session")
def embedded(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The five serving functions on free ports, embedded backends (models in a directory, KV in memory)."""
    from zerorec.storage.objects_local import LocalObjectStore

    data = tmp_path_factory.mktemp("functions-data")
    version = publish(LocalObjectStore(data / "objects"), "recommender", tiny.files)
    env = function_env(
        False,
        data,
        {
            "ZEROREC_KV_STORE": "memory",
            "ZEROREC_EVENT_BUS": "memory",
            "ZEROREC_MODEL_NAME": "recommender",
            "ZEROREC_MODEL_RETRY_S": "1",
        },
    )
    services = [ff(name, free_port()) for name in SERVING]
    stack = start_stack(services, env, data / "logs")
    stack.env["VERSION"] = version
    stack.env["OBJECTS"] = str(data / "objects")
    yield stack
    stop_stack(stack)
