"""Fixtures for the jobs: the repo root on sys.path (for `jobs.*`), one small Spark session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A local[2] Spark session with a small driver (other work shares the cores)."""
    pytest.importorskip("pyspark", reason="pip install -e '.[spark]'")
    from jobs.feature_engineering.job import spark_session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python UDF workers: this venv

    session = spark_session("local[2]", "512m")
    yield session
    session.stop()
