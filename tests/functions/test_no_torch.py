"""No torch on the serving path: importing a function module (which loads the model) in a fresh
interpreter never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fn_bundles import publish
from fn_stack import REPO, SERVING, Tiny
from zerorec.storage.objects_local import LocalObjectStore

from local.functions import function_env

PROBE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("fn", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
slot = getattr(module, "SLOT", None)  # the BFF holds no model
assert slot is None or slot.version, slot.last_error
print("TORCH", sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
print("SCIPY", sorted(m for m in sys.modules if m == "scipy" or m.startswith("scipy.")))
"""


@pytest.fixture(scope="module")
def data_dir(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("no-torch")
    publish(LocalObjectStore(data / "objects"), "recommender", tiny.files)
    return data


@pytest.mark.parametrize("fn", [*SERVING, "recommender"])
def test_function_module_does_not_import_torch(fn: str, data_dir: Path) -> None:
    env = function_env(False, data_dir, {"ZEROREC_KV_STORE": "memory", "ZEROREC_EVENT_BUS": "memory"})
    source = REPO / "functions" / fn / "main.py"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(source)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TORCH []" in out.stdout, out.stdout
    if fn in ("reranking", "user", "item", "recommender"):  # data only: no scipy at cold start
        assert "SCIPY []" in out.stdout, out.stdout
