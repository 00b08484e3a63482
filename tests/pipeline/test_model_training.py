"""model-training function: a train task event -> a published bundle; bad or overlapping tasks refused."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import functions_framework
import pandas as pd
import pytest
from pipeline_helpers import EMBEDDED, REPO, call
from zerorec import settings as settings_mod
from zerorec.bundle import latest_version
from zerorec.cloudevents_io import new_event, to_http_binary
from zerorec.data import SyntheticConfig, generate
from zerorec.storage.objects_local import LocalObjectStore

TRAIN = "dev.zerorec.task.train.v1"


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    env = {**EMBEDDED, "ZEROREC_DATA_DIR": str(tmp_path / "data"), "ZEROREC_MODEL_NAME": "nightly"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings_mod.get_settings.cache_clear()
    source = REPO / "functions" / "model-training" / "main.py"
    yield functions_framework.create_app(target="model_training", source=str(source))
    settings_mod.get_settings.cache_clear()


def _post(app: Any, event_type: str, data: dict[str, Any]) -> Any:
    headers, body = to_http_binary(new_event(event_type, data, source="/test"))
    return call(app, "POST", "/", headers=headers, content=body)


def test_train_task_publishes_a_bundle(app: Any, tmp_path: Path) -> None:
    inter, _ = generate(SyntheticConfig(n_users=80, n_items=150, mean_interactions=20, seed=5))
    rows = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(inter))],
            "user_id": inter["user_id"].to_numpy(),
            "item_id": inter["item_id"].to_numpy(),
            "kind": "click",
            "timestamp": pd.to_datetime(inter["timestamp"].to_numpy(), unit="s", utc=True),
        }
    )
    buf = io.BytesIO()
    rows.to_parquet(buf)
    store = LocalObjectStore(tmp_path / "data" / "objects")
    store.put("exports/events/2024-05-01/part-0.parquet", buf.getvalue())

    r = _post(app, TRAIN, {"events_prefix": "exports/events"})

    assert r.status_code == 200, r.text
    assert r.json()["event"]["version"] == latest_version(store, "nightly")


@pytest.mark.parametrize("name", ["recommender", "vectors", "Nightly"])
def test_a_task_cannot_publish_under_another_models_name(app: Any, tmp_path: Path, name: str) -> None:
    """The function publishes only ZEROREC_MODEL_NAME ('nightly' here): a task naming any other
    bundle is refused before anything is read, and no LATEST appears."""
    r = _post(app, TRAIN, {"events_prefix": "exports/events", "name": name})
    assert r.status_code == 400 and "publishes only 'nightly'" in r.json()["error"], r.text
    assert not (tmp_path / "data" / "objects" / "models").exists()
    r = _post(app, TRAIN, {"events_prefix": "exports/nothing-here", "name": "nightly"})
    assert r.status_code == 422, "its own name is accepted (and then finds no export)"


def test_missing_export_is_422_and_wrong_task_is_400(app: Any) -> None:
    r = _post(app, TRAIN, {"events_prefix": "exports/nothing-here"})
    assert r.status_code == 422 and "no exported events" in r.json()["error"]
    r = _post(app, "dev.zerorec.task.rebuild-hot.v1", {})
    assert r.status_code == 400 and "model-training takes" in r.json()["error"]
    assert call(app, "GET", "/health").json() == {"status": "ok", "running": False}
