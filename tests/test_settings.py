"""Settings read from the environment: empty values of optional paths mean "not set"."""

from __future__ import annotations

from pathlib import Path

import pytest
from zerorec.settings import Settings


@pytest.mark.parametrize(
    "setting, field",
    [
        ("ZEROREC_MODEL_CACHE_DIR", "model_cache_dir"),
        ("ZEROREC_SQLITE_KV_PATH", "sqlite_kv_path"),
        ("ZEROREC_SQLITE_BUS_PATH", "sqlite_bus_path"),
        ("ZEROREC_INIT_DATASET", "init_dataset"),
    ],
)
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_optional_setting_is_unset_not_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, setting: str, field: str, empty: str
) -> None:
    """Regression: `ZEROREC_MODEL_CACHE_DIR=` was read as Path(''), the current directory."""
    monkeypatch.setenv(setting, empty)
    assert getattr(Settings(), field) is None


def test_a_set_cache_dir_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ZEROREC_MODEL_CACHE_DIR", str(tmp_path))
    assert Settings().model_cache_dir == tmp_path
