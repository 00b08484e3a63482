"""Fixtures for the event pipeline: handler apps on the embedded backends (helpers: pipeline_helpers)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from zerorec import settings as settings_mod

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_helpers import EMBEDDED, REPO


@pytest.fixture
def make_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Build a function's ASGI app on the embedded backends (plus extra ZEROREC_* env)."""

    def build(name: str, **env: str) -> Any:
        for key, value in {**EMBEDDED, "ZEROREC_DATA_DIR": str(tmp_path / "data"), **env}.items():
            monkeypatch.setenv(key, value)
        settings_mod.get_settings.cache_clear()
        source = REPO / "functions" / name / "main.py"
        return functions_framework.create_app(target=name, source=str(source))

    yield build
    settings_mod.get_settings.cache_clear()
