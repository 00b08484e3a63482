"""Fixtures for the container tests: the two images, the real servers, a model in the real S3.

The images are built by `./local/task images` (the test task builds them first); a session without
them builds them here (minutes the first time, seconds from podman's layer cache). Without podman
the tests report themselves skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, REPO / "tests" / "functions"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from local import containers as ct  # noqa: E402


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The serve and jobs images (built here if this session has none). No podman: skipped with the
    reason, or failed under ZEROREC_INTEGRATION=1 (CI's bootstrap installs it)."""
    missing = ct.available()
    if missing is not None:
        (pytest.fail if os.environ.get("ZEROREC_INTEGRATION") == "1" else pytest.skip)(
            f"no container runtime: {missing}"
        )
    for kind, image in (("serve", ct.SERVE_IMAGE), ("jobs", ct.JOBS_IMAGE)):
        if not ct.image_exists(f"{image}:latest"):
            subprocess.run([str(REPO / "local" / "images.sh"), kind], check=True, timeout=3600)
    return {"serve": f"{ct.SERVE_IMAGE}:latest", "jobs": f"{ct.JOBS_IMAGE}:latest"}


@pytest.fixture(scope="session")
def infra(redis_server: str, kafka_server: str, s3_server: str) -> dict[str, str]:
    """The ZEROREC_* lines of `local/infra.sh env` (the tests' real servers), once all three answer."""
    from local.functions import infra_env

    return infra_env()


@pytest.fixture(scope="session")
def model_name(infra: dict[str, str]) -> str:
    """A tiny model published to the real S3 under a name of this session's own."""
    from fn_bundles import publish, train_tiny
    from zerorec.bench_serve import settings_from_env
    from zerorec.storage import object_store

    name = f"ctest-{uuid.uuid4().hex[:8]}"
    rec, _info, _interactions, _items = train_tiny()
    publish(object_store(settings_from_env(infra)), name, rec.to_files())
    return name


@pytest.fixture
def started() -> Iterator[list[ct.Container]]:
    """Containers a test starts; removed afterwards whatever happened."""
    running: list[ct.Container] = []
    yield running
    for c in running:
        c.stop()
