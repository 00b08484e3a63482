"""Secure by default: behavior, item admin and user admin refuse to start without an API key on real backends.

The refusal happens while main.py imports, before any backend is contacted, so these tests need no
server: the processes get a real-backend configuration pointing nowhere.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fn_stack import free_port
from zerorec.settings import API_KEYS_SECRET, RefusedToStart, Settings, require_api_key

from local.functions import ff, function_env, spawn, terminate, wait_ready

REPO = Path(__file__).resolve().parents[2]
REAL = {"ZEROREC_EVENT_BUS": "kafka", "ZEROREC_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
KEYS = {
    "behavior": "ZEROREC_BEHAVIOR_API_KEY",
    "item": "ZEROREC_ADMIN_API_KEY",
    "user": "ZEROREC_ADMIN_API_KEY",
}


@pytest.mark.parametrize(
    ("backends", "key", "open_", "refused"),
    [
        ({}, "", False, False),  # embedded (a developer's machine): open by default
        ({"object_store": "s3"}, "", False, True),
        ({"kv_store": "redis"}, "", False, True),
        ({"event_bus": "kafka"}, "", False, True),
        ({"object_store": "s3", "kv_store": "redis", "event_bus": "kafka"}, "k", False, False),
        ({"object_store": "s3", "kv_store": "redis", "event_bus": "kafka"}, "", True, False),
    ],
)
def test_require_api_key_matrix(backends: dict, key: str, open_: bool, refused: bool) -> None:
    embedded = {"object_store": "local", "kv_store": "sqlite", "event_bus": "sqlite"}
    s = Settings(allow_unauthenticated=open_, **{**embedded, **backends})  # not the process's env
    if not refused:
        require_api_key(s, key, "ZEROREC_BEHAVIOR_API_KEY", "behavior")
        return
    with pytest.raises(RefusedToStart) as err:
        require_api_key(s, key, "ZEROREC_BEHAVIOR_API_KEY", "behavior")
    reason = str(err.value.code)
    assert err.value.code != 0
    assert "ZEROREC_BEHAVIOR_API_KEY" in reason and API_KEYS_SECRET in reason
    assert "ZEROREC_ALLOW_UNAUTHENTICATED=1" in reason


def _env(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    env = function_env(False, tmp_path, {**REAL, **extra})
    for name in [*KEYS.values(), "ZEROREC_ALLOW_UNAUTHENTICATED"]:
        if name not in extra:
            env.pop(name, None)
    return env


@pytest.mark.parametrize("fn", ["behavior", "item", "user"])
def test_the_process_exits_non_zero_and_names_the_setting(fn: str, tmp_path: Path) -> None:
    """No key, Kafka configured: the process ends at once with status 1 and one clear reason, so a
    pod never becomes Ready (kn service create reports it)."""
    done = subprocess.run(
        list(ff(fn, free_port()).argv), env=_env(tmp_path, {}), cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"refusing to start {fn}" in done.stderr
    assert KEYS[fn] in done.stderr and API_KEYS_SECRET in done.stderr
    assert "Traceback" not in done.stderr, "a configuration refusal, not a crash"


@pytest.mark.parametrize("fn", ["behavior", "item"])
@pytest.mark.parametrize("opened_by", ["key", "flag"])
def test_a_key_or_the_explicit_flag_lets_it_start(fn: str, opened_by: str, tmp_path: Path) -> None:
    """With the key (or ZEROREC_ALLOW_UNAUTHENTICATED=1) the function starts and becomes ready (item
    without a model too: 'degraded'); with the flag it logs that it runs without authentication."""
    extra = {KEYS[fn]: "s3cret"} if opened_by == "key" else {"ZEROREC_ALLOW_UNAUTHENTICATED": "1"}
    svc, log = ff(fn, free_port()), tmp_path / f"{fn}.log"
    proc = spawn(svc, _env(tmp_path, extra), log)
    try:
        wait_ready({svc: proc}, 60, {fn: log})
    finally:
        terminate(proc.pid, grace_s=5)
    out = log.read_text()
    assert "refusing to start" not in out
    assert ("WITHOUT authentication" in out) == (opened_by == "flag"), out[-2000:]
