"""Fixtures for the serving functions: a tiny trained bundle, functions-framework processes.

The bundle is trained once per session with C's API (zerorec.pipeline.train_recommender) on a small
synthetic set; processes start with local/functions.py's helpers on free ports (fn_stack).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fn_bundles import publish, train_tiny  # noqa: E402
from fn_stack import SERVING, Stack, Tiny, free_port, start_stack, stop_stack  # noqa: E402

from local.functions import ff, function_env  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    """A bundle's files trained in seconds on the synthetic generator (torch is used here only)."""
    rec, info, interactions, items = train_tiny()
    return Tiny(rec.to_files(), interactions, items, info)


@pytest.fixture(scope="session")
def embedded(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The five serving functions on free ports, embedded backends (models in a directory, KV in memory)."""
    from zerorec.storage.objects_local import LocalObjectStore

    data = tmp_path_factory.mktemp("functions-data")
    version = publish(LocalObjectStore(data / "objects"), "recommender", tiny.files)
    env = function_env(
        False,
        data,
        {
            "ZEROREC_KV_STORE": "memory",
            "ZEROREC_EVENT_BUS": "memory",
            "ZEROREC_MODEL_NAME": "recommender",
            "ZEROREC_MODEL_RETRY_S": "1",
        },
    )
    services = [ff(name, free_port()) for name in SERVING]
    stack = start_stack(services, env, data / "logs")
    stack.env["VERSION"] = version
    stack.env["OBJECTS"] = str(data / "objects")
    yield stack
    stop_stack(stack)
