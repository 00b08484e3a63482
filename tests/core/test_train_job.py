"""jobs/train/main.py: exported behavior log -> bundle -> model.published CloudEvent to the sinks."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pandas as pd
import pytest
from zerorec.bundle import latest_version, load_bundle
from zerorec.cloudevents_io import event_data, from_http, validate
from zerorec.data import SyntheticConfig, generate
from zerorec.errors import NotFoundError
from zerorec.pipeline import PipelineConfig, Recommender, train_recommender
from zerorec.storage.objects_local import LocalObjectStore

JOB = Path(__file__).resolve().parents[2] / "jobs" / "train" / "main.py"
CFG = PipelineConfig(ease_min_count=1, als_factors=8, n_candidates=100, ranker_epochs=2)


@pytest.fixture(scope="module")
def job():
    spec = importlib.util.spec_from_file_location("zerorec_train_job", JOB)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export(store: LocalObjectStore, inter: pd.DataFrame) -> None:
    """Write the log as the export-events task does (two chunks, one duplicated event)."""
    rows = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(inter))],
            "user_id": inter["user_id"].to_numpy(),
            "item_id": inter["item_id"].to_numpy(),
            "kind": "click",
            "timestamp": pd.to_datetime(inter["timestamp"].to_numpy(), unit="s", utc=True),
            "value": None,
        }
    )
    half = len(rows) // 2
    for i, part in enumerate((rows.iloc[: half + 10], rows.iloc[half:])):  # overlap: duplicates
        buf = io.BytesIO()
        part.to_parquet(buf)
        store.put(f"exports/events/2024-05-01/run-{i}.parquet", buf.getvalue())


def test_event_log_to_bundle_and_published_event(job, tmp_path):
    inter, _ = generate(SyntheticConfig(n_users=80, n_items=150, mean_interactions=20, seed=3))
    store = LocalObjectStore(tmp_path)
    _export(store, inter)
    frame = job.read_event_log(store, "exports/events")
    assert len(frame) == len(inter)  # duplicated event ids read once
    sent = []

    def post(url, headers, body):
        sent.append((url, headers, body))
        return 202

    report = job.train_and_publish(
        store,
        frame,
        name="recommender",
        sinks=["http://broker.example/", "http://recall.example/events/model-published"],
        post=post,
        train=lambda i, it, log=None: train_recommender(i, it, CFG, log=log),
    )
    version = latest_version(store, "recommender")
    assert report["event"]["version"] == version
    assert report["delivered"] == {u: 202 for u, _, _ in sent} and len(sent) == 2
    event = from_http(sent[0][1], sent[0][2])
    validate(event)
    assert event["type"] == "dev.zerorec.model.published.v1"
    assert event_data(event)["manifest_key"] == f"models/recommender/{version}/manifest.json"
    rec = Recommender.from_files(load_bundle(store, "recommender", version).files)
    assert len(rec.recommend(str(inter["user_id"].iloc[0]), 5)) == 5


def test_sink_failure_is_reported_not_fatal(job, tmp_path):
    inter, items = generate(SyntheticConfig(n_users=60, n_items=100, mean_interactions=15, seed=4))

    def down(url, headers, body):
        raise ConnectionError("refused")

    report = job.train_and_publish(
        LocalObjectStore(tmp_path),
        inter,
        items,
        sinks=["http://down.example/"],
        post=down,
        train=lambda i, it, log=None: train_recommender(i, it, CFG, train_ranker=False, log=log),
    )
    assert report["delivered"]["http://down.example/"].startswith("error")
    assert latest_version(LocalObjectStore(tmp_path), "recommender") == report["event"]["version"]


def test_missing_log_is_a_clear_error(job, tmp_path, monkeypatch):
    from zerorec.settings import get_settings

    monkeypatch.setenv("ZEROREC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ZEROREC_OBJECT_STORE", "local")
    get_settings.cache_clear()
    with pytest.raises(NotFoundError, match="no exported events"):
        job.read_event_log(LocalObjectStore(tmp_path), "exports/events")
    try:
        assert job.main(["--events-prefix", "nothing/here"]) == 2
    finally:
        get_settings.cache_clear()


def test_event_log_weights_by_kind_and_leaves_out_negative_feedback(job, tmp_path, monkeypatch):
    """Per-kind weights (ZEROREC_FEEDBACK_WEIGHTS) reach training; dislike/hide are no positives."""
    from zerorec import settings as settings_mod

    monkeypatch.setenv("ZEROREC_FEEDBACK_WEIGHTS", "purchase=7,view=0.25")
    settings_mod.get_settings.cache_clear()
    try:
        store = LocalObjectStore(tmp_path)
        kinds = ["view", "purchase", "click", "dislike", "hide"]
        rows = pd.DataFrame(
            {
                "event_id": [f"e{i}" for i in range(5)],
                "user_id": ["u1"] * 5,
                "item_id": [f"i{i}" for i in range(5)],
                "kind": kinds,
                "timestamp": pd.to_datetime([1_700_000_000 + i for i in range(5)], unit="s", utc=True),
                "value": None,
            }
        )
        buf = io.BytesIO()
        rows.to_parquet(buf)
        store.put("exports/events/2024-05-01/run-0.parquet", buf.getvalue())
        frame = job.read_event_log(store, "exports/events")
    finally:
        settings_mod.get_settings.cache_clear()
    weights = dict(zip(frame["item_id"], frame["weight"].astype(float), strict=True))
    assert weights == {"i0": 0.25, "i1": 7.0, "i2": 1.0}
