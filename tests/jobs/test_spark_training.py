"""The Spark training engine (issue 11): its bundle loads and answers like the local engine's, and
its Spark pieces compute what the local engine computes (item-CF, bm25, the validation cut)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyspark", reason="pip install -e '.[spark]'")

from zerorec.bundle import load_bundle, publish_bundle
from zerorec.data import SyntheticConfig, generate, temporal_user_split
from zerorec.data.interactions import InteractionData
from zerorec.errors import InvalidInputError
from zerorec.pipeline import CHANNEL_ORDER, PipelineConfig, Recommender
from zerorec.storage.objects_local import LocalObjectStore
from zerorec.training.progress import StageLog
from zerorec.training.spark import (
    SparkTrainConfig,
    bm25,
    normalize,
    spark_itemcf,
    train_spark,
    validation_cut,
)

TINY = SyntheticConfig(n_users=80, n_items=150, mean_interactions=12)
CONFIG = PipelineConfig(
    als_factors=8,
    als_iterations=3,
    ranker_epochs=1,
    n_candidates=60,
    quotas={"ease": 20, "itemcf": 15, "als": 10, "vector": 5, "hot": 5, "fresh": 5},
)


@pytest.fixture(scope="module")
def tiny():
    return generate(TINY)


@pytest.fixture(scope="module")
def trained(spark, tiny):
    interactions, items = tiny
    lines: list[str] = []
    log = StageLog(lines.append)
    rec, info = train_spark(
        interactions,
        items,
        CONFIG,
        SparkTrainConfig(master="local[2]", progress_period_s=1.0),
        log=log,
        spark=spark,
    )
    return rec, info, lines


def _frame(spark, data: InteractionData):
    coo = data.times.tocoo()
    rows = [(int(u), int(i), int(t), 1.0) for u, i, t in zip(coo.row, coo.col, coo.data, strict=True)]
    return spark.createDataFrame(rows, "u int, i int, t long, w float")


def test_bundle_loads_in_serving_and_answers(trained, tiny, tmp_path):
    rec, info, _ = trained
    interactions, _ = tiny
    store = LocalObjectStore(tmp_path / "objects")
    version = publish_bundle(
        store, "spark-test", rec.to_files(), params=info["config"], data_window=info["data_window"]
    )
    bundle = load_bundle(store, "spark-test", version)
    served = Recommender.from_files(bundle.files)  # what the serving functions do at cold start
    assert set(served.channels) == set(CHANNEL_ORDER)
    assert served.scorer is not None  # the DeepFM ranker, ONNX
    assert info["engine"] == "spark" and info["ranker_rows"] > 0
    assert 0 < info["validation_candidate_recall"] <= 1
    assert info["data_window"]["interactions"] == len(interactions)
    user = interactions["user_id"].iloc[0]
    seen = set(interactions.loc[interactions["user_id"] == user, "item_id"])
    recs = served.recommend(user, 5)
    assert len(recs) == 5 and not seen & {r.item_id for r in recs}
    assert len(served.recommend(None, 5, recent_items=[next(iter(seen))])) == 5  # an unknown user
    als = served.channels["als"].arrays()
    assert als["item_factors"].shape == (rec.data.n_items, CONFIG.als_factors)
    assert np.abs(als["item_factors"].astype(np.float32)).sum() > 0
    lists = served.channels["itemcf"].arrays()
    rows = np.arange(rec.data.n_items)[:, None]
    assert (lists["neighbours"] != rows).all()  # never the item itself
    assert ((lists["neighbours"] >= 0).sum(axis=1) <= CONFIG.itemcf_k - 1).all()


def test_progress_lines_per_stage_with_elapsed_time(trained):
    _, info, lines = trained
    assert any("fit als (Spark MLlib)" in line for line in lines)
    assert any("building ranker training data" in line for line in lines)
    assert all("s  " in line for line in lines if "spark:" not in line)  # "+   12.3s  stage"
    assert info["stage_seconds"]["fit als (Spark MLlib)"] > 0


def test_itemcf_matches_implicit_cosine(spark, tiny):
    from implicit.nearest_neighbours import CosineRecommender

    interactions, items = tiny
    data = InteractionData.from_frame(interactions, items)
    k = 10
    ours = spark_itemcf(_frame(spark, data), data.n_items, k, max_user_items=10**6).tocsr()
    model = CosineRecommender(K=k, num_threads=1)
    model.fit((data.matrix > 0).astype(np.float32).tocsr(), show_progress=False)
    ref = model.similarity.tocsr().astype(np.float32)
    ref.setdiag(0)
    ref.eliminate_zeros()
    for i in range(data.n_items):
        a = np.sort(ours[i].data)[::-1]
        b = np.sort(ref[i].data)[::-1]
        assert np.allclose(a, b[: len(a)], atol=1e-5) and len(a) == len(b), i


def test_bm25_matches_implicit(spark, tiny):
    from implicit.nearest_neighbours import bm25_weight

    interactions, items = tiny
    data = InteractionData.from_frame(interactions, items)
    ours = bm25(_frame(spark, data), data.n_users).toPandas()
    ref = bm25_weight((data.matrix > 0).astype(np.float32), K1=100, B=0.8).tocsr()
    expected = np.asarray(ref[ours["u"].to_numpy(), ours["i"].to_numpy()]).ravel()
    assert np.allclose(ours["c"].to_numpy(), expected, rtol=1e-5)


def test_validation_cut_matches_the_local_split(spark, tiny):
    interactions, _ = tiny
    log = normalize(spark.createDataFrame(interactions[["user_id", "item_id", "timestamp"]]), "tiny")
    held = validation_cut(log).where("held").select("user_id", "item_id").toPandas()
    _, test = temporal_user_split(interactions)
    assert set(map(tuple, held.to_numpy().tolist())) == set(
        zip(test["user_id"], test["item_id"], strict=True)
    )


def test_missing_column_and_bad_rows_are_clear_errors(spark):
    frame = spark.createDataFrame([("u1", "i1")], "user_id string, item_id string")
    with pytest.raises(InvalidInputError, match="timestamp"):
        normalize(frame, "events.csv")
    bad = spark.createDataFrame(
        [("u1", "i1", "yesterday-ish")], "user_id string, item_id string, timestamp string"
    )
    with pytest.raises(InvalidInputError, match="malformed timestamp"):
        normalize(bad, "events.csv")


def test_cli_train_engine_spark_publishes_a_bundle(spark, tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner
    from zerorec.cli import app
    from zerorec.settings import get_settings

    interactions, items = tiny
    folder = tmp_path / "data"
    folder.mkdir()
    interactions[["user_id", "item_id", "timestamp"]].to_csv(folder / "interactions.csv", index=False)
    items.assign(categories=items["categories"].map("|".join)).to_csv(folder / "items.csv", index=False)
    monkeypatch.setenv("ZEROREC_DATA_DIR", str(tmp_path / "zr"))
    monkeypatch.setenv("ZEROREC_OBJECT_STORE", "local")  # the test task exports the real S3's settings
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app,
            ["train", "--engine", "spark", "--master", "local[2]", "--dataset", str(folder), "--name", "sp"],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.output.strip().splitlines()[-1])
        assert report["engine"] == "spark"
        bundle = load_bundle(LocalObjectStore(tmp_path / "zr" / "objects"), "sp")
        assert bundle.version == report["version"]
        assert Recommender.from_files(bundle.files).recommend("u1", 3)
    finally:
        get_settings.cache_clear()


def test_model_training_on_spark_reads_the_parquet_export(spark, tiny, tmp_path):
    """ZEROREC_TRAIN_ENGINE=spark in the model-training function: the worker's export (with a
    repeated event, as after a crash) -> Spark -> a published bundle."""
    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from zerorec.tasks import EXPORT_SCHEMA

    from jobs.train.main import train_events_spark

    interactions, _ = tiny
    rows = interactions.assign(
        event_id=[f"e{k}" for k in range(len(interactions))],
        source="test",
        kind="click",
        timestamp=pd.to_datetime(interactions["timestamp"], unit="s", utc=True),
        value=None,
        context=None,
        topic="zerorec.behavior",
        partition=0,
        offset=range(len(interactions)),
    )
    rows = pd.concat([rows, rows.iloc[:5]])  # the same events exported twice
    table = pa.Table.from_pandas(rows[EXPORT_SCHEMA.names], schema=EXPORT_SCHEMA, preserve_index=False)
    store = LocalObjectStore(tmp_path / "objects")
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.put("exports/events/2024-01-01/part-a-000000000000.parquet", buf.getvalue())
    report = train_events_spark(store, "exports/events", name="from-export", sinks=[])
    assert report["interactions"] == len(interactions)  # the repeated events count once
    served = Recommender.from_files(load_bundle(store, "from-export").files)
    assert len(served.recommend(interactions["user_id"].iloc[0], 5)) == 5
