"""local/infra.sh: the real servers answer, and its error paths are clear and bounded.

The lifecycle and fault tests run their own Redis (or a fake server) on a free port in a temporary
folder, so they never touch the servers that the rest of the suite uses.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "local" / "infra.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _infra(*args: str, tmp: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "ZEROREC_INFRA_DIR": str(tmp / "infra"), **env}
    return subprocess.run(
        [str(INFRA), *args], env=full, capture_output=True, text=True, timeout=timeout, check=False
    )


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


# --- the servers that `./local/task test` started -------------------------------------------------


@pytest.mark.integration
def test_kafka_answers_and_acknowledges(kafka_server: str, namespace: str) -> None:
    from confluent_kafka import Consumer, Producer

    topic = f"infra.{namespace}"
    producer = Producer({"bootstrap.servers": kafka_server, "acks": "all", "message.timeout.ms": 15000})
    acked = []
    producer.produce(topic, b"ping", on_delivery=lambda err, msg: acked.append(err))
    assert producer.flush(20) == 0
    assert acked == [None]

    consumer = Consumer({
        "bootstrap.servers": kafka_server, "group.id": namespace, "auto.offset.reset": "earliest",
    })
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        msg = None
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.value() == b"ping"
    finally:
        consumer.close()


@pytest.mark.integration
def test_redis_answers(redis_server: str, namespace: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_server, socket_timeout=3)
    try:
        r.set(f"{namespace}:k", "v", ex=60)
        assert r.get(f"{namespace}:k") == b"v"
    finally:
        r.delete(f"{namespace}:k")
        r.close()


@pytest.mark.integration
def test_s3_bucket_exists_and_stores(s3_server: str, real_settings, namespace: str) -> None:
    import obstore  # the raw client, not zerorec's adapter: this checks the server and its bucket
    from obstore.store import S3Store

    s3 = S3Store(
        real_settings.s3_bucket,
        endpoint=s3_server,
        access_key_id=real_settings.s3_access_key,
        secret_access_key=real_settings.s3_secret_key,
        region=real_settings.s3_region,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )
    key = f"infra/{namespace}.txt"
    obstore.put(s3, key, b"hello")
    try:
        assert bytes(obstore.get(s3, key).bytes()) == b"hello"
    finally:
        obstore.delete(s3, key)


def test_env_points_at_the_default_endpoints(tmp_path: Path) -> None:
    from zerorec.settings import Settings

    out = _infra("env", tmp=tmp_path).stdout
    env = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    for name in list(os.environ):
        if name.startswith("ZEROREC_INFRA_"):
            pytest.skip("ports overridden in this environment")
    defaults = Settings()
    assert env["ZEROREC_KAFKA_BOOTSTRAP"] == defaults.kafka_bootstrap
    assert env["ZEROREC_REDIS_URL"] == defaults.redis_url
    assert env["ZEROREC_S3_ENDPOINT"] == defaults.s3_endpoint
    assert (env["ZEROREC_OBJECT_STORE"], env["ZEROREC_KV_STORE"], env["ZEROREC_EVENT_BUS"]) == (
        "s3", "redis", "kafka",
    )


# --- lifecycle and faults, on a private port and folder --------------------------------------------


def test_redis_lifecycle_is_idempotent(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("ZEROREC_INTEGRATION") == "1":
            pytest.fail("redis-server is not installed: run local/bootstrap.sh")
        pytest.skip("redis-server is not installed")
    port = str(_free_port())
    try:
        first = _infra("start", "redis", tmp=tmp_path, ZEROREC_INFRA_REDIS_PORT=port)
        assert first.returncode == 0, first.stderr
        assert "redis: ready on" in first.stdout
        again = _infra("start", "redis", tmp=tmp_path, ZEROREC_INFRA_REDIS_PORT=port)
        assert again.returncode == 0 and "already running" in again.stdout
        assert _infra("status", "redis", tmp=tmp_path, ZEROREC_INFRA_REDIS_PORT=port).returncode == 0
    finally:
        stop = _infra("stop", "redis", tmp=tmp_path, ZEROREC_INFRA_REDIS_PORT=port)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert _infra("status", "redis", tmp=tmp_path, ZEROREC_INFRA_REDIS_PORT=port).returncode == 3
    again = _infra("stop", "redis", tmp=tmp_path, ZEROREC_INFRA_REDIS_PORT=port)
    assert again.returncode == 0 and "not running" in again.stdout


def test_port_taken_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = str(squatter.getsockname()[1])
        t0 = time.monotonic()
        res = _infra("start", "redis", tmp=tmp_path, ZEROREC_INFRA_REDIS_PORT=port)
    assert res.returncode != 0
    assert f"port 127.0.0.1:{port} is already in use" in res.stderr
    assert time.monotonic() - t0 < 10


def _fake_server(tmp_path: Path, body: str) -> Path:
    fake = tmp_path / f"fake-server-{uuid.uuid4().hex[:8]}"
    fake.write_text(f"#!/usr/bin/env bash\n{body}\n")
    fake.chmod(0o755)
    return fake


def test_server_that_never_answers_is_stopped_after_the_bound(tmp_path: Path) -> None:
    fake = _fake_server(tmp_path, 'echo "fake: listening nowhere"\nwhile :; do sleep 0.2; done')
    t0 = time.monotonic()
    res = _infra(
        "start", "redis", tmp=tmp_path, ZEROREC_INFRA_REDIS_PORT=str(_free_port()),
        ZEROREC_INFRA_REDIS_SERVER=str(fake), ZEROREC_INFRA_START_TIMEOUT="3",
    )
    took = time.monotonic() - t0
    assert res.returncode != 0
    assert "not ready within 3s" in res.stderr
    assert "fake: listening nowhere" in res.stderr  # the log tail is shown
    assert took < 30
    time.sleep(0.5)
    assert _processes_mentioning(fake.name) == []


def test_server_that_exits_at_start_is_a_clear_error(tmp_path: Path) -> None:
    fake = _fake_server(tmp_path, 'echo "fake: bad config" >&2\nexit 1')
    res = _infra(
        "start", "redis", tmp=tmp_path, ZEROREC_INFRA_REDIS_PORT=str(_free_port()),
        ZEROREC_INFRA_REDIS_SERVER=str(fake), ZEROREC_INFRA_START_TIMEOUT="30", timeout=20,
    )
    assert res.returncode != 0
    assert "exited during start-up" in res.stderr
    assert "fake: bad config" in res.stderr
