from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    return Path(os.environ.get("ZEROREC_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture
def ml_small() -> Path:
    path = shared_dir() / "datasets" / "ml-latest-small"
    if not (path / "ratings.csv").exists():
        pytest.skip(f"ml-latest-small not found under {path} (set ZEROREC_SHARED_DIR)")
    return path
