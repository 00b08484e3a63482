"""Fixtures of the fuzz tests: every HTTP function's app in this process, on the embedded backends
(in-memory KV and bus, models in a local directory) with a tiny published model.

In-process ASGI apps (what uvicorn serves), not processes: thousands of requests cost milliseconds
each, and the worker's log waits can be shortened.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, REPO / "tests" / "functions", Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from fuzz_targets import HTTP_FUNCTIONS  # noqa: E402

# No downstream answers the BFF here (port 1 refuses at once): it must degrade, never fail.
_REFUSED = "http://127.0.0.1:1"


@pytest.fixture(scope="session")
def fuzz_apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """name -> ASGI app of every function in HTTP_FUNCTIONS."""
    import functions_framework
    from fn_bundles import publish, train_tiny
    from zerorec import settings as settings_mod
    from zerorec import tasks
    from zerorec.storage.objects_local import LocalObjectStore

    data = tmp_path_factory.mktemp("fuzz-data")
    rec, _, _, _ = train_tiny()
    publish(LocalObjectStore(data / "objects"), "recommender", rec.to_files())
    env = {
        "ZEROREC_DATA_DIR": str(data),
        "ZEROREC_OBJECT_STORE": "local",
        "ZEROREC_KV_STORE": "memory",
        "ZEROREC_EVENT_BUS": "memory",
        "ZEROREC_MODEL_NAME": "recommender",
        "ZEROREC_MODEL_POLL_S": "0",
        "ZEROREC_BEHAVIOR_API_KEY": "",
        "ZEROREC_ADMIN_API_KEY": "",
        **{f"ZEROREC_{n.upper()}_URL": _REFUSED for n in ("recall", "ranking", "reranking", "user", "item")},
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setattr(tasks, "IDLE_S", 0.05)  # the in-memory log answers at once
        mp.setattr(tasks, "FIRST_WAIT_S", 0.05)
        settings_mod.get_settings.cache_clear()
        apps = {
            name: functions_framework.create_app(
                target=name, source=str(REPO / "functions" / name / "main.py")
            )
            for name in HTTP_FUNCTIONS
        }
        yield apps
    settings_mod.get_settings.cache_clear()
