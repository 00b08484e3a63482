"""Fixtures: the fake downstream functions of bff_fakes, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bff_fakes import SERVICES, Fakes, ServerThread, make_app


@pytest.fixture(scope="session")
def fake_cluster() -> Iterator[Fakes]:
    fakes = Fakes()
    servers = []
    for service in SERVICES:
        server = ServerThread(make_app(service, fakes)).start()
        servers.append(server)
        fakes.urls[service] = f"http://127.0.0.1:{server.port}"
    yield fakes
    for server in servers:
        server.stop()


@pytest.fixture
def fakes(fake_cluster: Fakes) -> Iterator[Fakes]:
    fake_cluster.reset()
    yield fake_cluster
    invalid = [(x.service, x.path, x.invalid) for x in fake_cluster.calls if x.invalid]
    fake_cluster.reset()
    assert invalid == [], f"the BFF sent bodies that break the contract: {invalid}"
