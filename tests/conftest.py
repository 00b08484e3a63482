"""Fixtures shared by the whole suite: real-server settings, server availability, namespaces.

Tests that need a real server ask for `redis_server`, `kafka_server` or `s3_server`. Without
ZEROREC_INTEGRATION=1 an unreachable server skips the test; with it, the test fails, so CI can never
pass by silently skipping its integration tests.
"""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlsplit

import pytest
from zerorec.settings import Settings

_HINT = "start it with local/infra.sh start (and export the lines of local/infra.sh env)"


def integration_required() -> bool:
    """True when ZEROREC_INTEGRATION=1: missing servers are failures, not skips."""
    return os.environ.get("ZEROREC_INTEGRATION", "") == "1"


def _reachable(host: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _require(name: str, address: str, host: str | None, port: int | None) -> None:
    if host and port and _reachable(host, port):
        return
    message = f"{name} is not reachable at {address}; {_HINT}"
    if integration_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_settings() -> Settings:
    """Settings selecting the real backends; endpoints come from ZEROREC_* env vars or defaults."""
    return Settings(object_store="s3", kv_store="redis", event_bus="kafka")


@pytest.fixture(scope="session")
def redis_server(real_settings: Settings) -> str:
    """The Redis URL, once the server answers on its port."""
    url = urlsplit(real_settings.redis_url)
    _require("Redis", real_settings.redis_url, url.hostname, url.port or 6379)
    return real_settings.redis_url


@pytest.fixture(scope="session")
def kafka_server(real_settings: Settings) -> str:
    """The Kafka bootstrap address, once the first broker answers on its port."""
    first = real_settings.kafka_bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    _require("Kafka", real_settings.kafka_bootstrap, host or None, int(port) if port.isdigit() else None)
    return real_settings.kafka_bootstrap


@pytest.fixture(scope="session")
def s3_server(real_settings: Settings) -> str:
    """The S3 endpoint, once the server answers on its port."""
    url = urlsplit(real_settings.s3_endpoint)
    default = 443 if url.scheme == "https" else 80
    _require("S3", real_settings.s3_endpoint, url.hostname, url.port or default)
    return real_settings.s3_endpoint


@pytest.fixture
def namespace() -> str:
    """A unique, lowercase alphanumeric name per test: use it as key prefix, topic suffix, object prefix."""
    return "t" + uuid.uuid4().hex[:12]
