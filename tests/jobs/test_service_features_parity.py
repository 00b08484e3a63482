"""What feature-engineering (Spark) writes to the KV, read by the ranking stage, equals what training
computes point in time from the same events (`ranking.features.EventLog`): one feature definition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from zerorec.ranking.features import EventLog, read_service_features
from zerorec.storage.kv_memory import MemoryKVStore
from zerorec.storage.objects_local import LocalObjectStore
from zerorec.tasks import EXPORT_SCHEMA

from jobs.feature_engineering.job import FeatureJobConfig, run_features

AS_OF = datetime(2024, 6, 30, 12, 0, tzinfo=UTC)
CATS = {f"i{i}": [["books", "music", "film"][i % 3]] + (["sale"] if i % 4 == 0 else []) for i in range(12)}


def _events(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    kinds = np.array(["view", "click", "like", "add_to_cart", "purchase", "rating"])
    age_s = rng.integers(-3600, 40 * 86400, n)  # whole seconds; some in the future (never count)
    kind = rng.choice(kinds, n)
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "source": "/zerorec/behavior",
            "user_id": [f"u{i}" for i in rng.integers(0, 6, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 12, n)],
            "kind": kind,
            "timestamp": [AS_OF - timedelta(seconds=int(a)) for a in age_s],
            "value": np.where(kind == "rating", rng.choice([1.0, 3.0, 5.0], n), np.nan),
            "context": None,
            "topic": "zerorec.behavior",
            "partition": 0,
            "offset": np.arange(n),
        }
    )


def test_spark_features_in_the_kv_equal_the_point_in_time_ones(spark: Any, tmp_path: Path) -> None:
    frame = _events()
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pandas(frame, schema=EXPORT_SCHEMA, preserve_index=False), path)
    catalogue = tmp_path / "items.csv"
    pd.DataFrame({"item_id": list(CATS), "categories": ["|".join(c) for c in CATS.values()]}).to_csv(
        catalogue, index=False
    )
    kv = MemoryKVStore()
    config = FeatureJobConfig(as_of=AS_OF, events_path=path, catalogue_path=catalogue)
    run_features(config, LocalObjectStore(tmp_path / "objects"), kv, spark=spark)

    items = sorted(CATS)
    users = sorted(frame["user_id"].unique())
    genres = sorted({c for cs in CATS.values() for c in cs})
    matrix = sp.csr_matrix(np.array([[c in CATS[i] for c in genres] for i in items], np.float64))
    training = frame.assign(
        timestamp=frame["timestamp"].map(lambda t: int(t.timestamp())), event_type=frame["kind"]
    )
    log = EventLog.from_frame(
        training, {u: k for k, u in enumerate(users)}, {i: k for k, i in enumerate(items)}, matrix
    )
    now = AS_OF.timestamp()
    for k, user in enumerate(users):
        want = log.snapshot(k, np.arange(len(items)), now)
        got = read_service_features(kv, user, items, [CATS[i] for i in items], now)
        np.testing.assert_array_equal(got.item_counts, want.item_counts)
        assert (got.user_events, got.user_views) == (want.user_events, want.user_views)
        np.testing.assert_allclose(got.category_affinity, want.category_affinity, atol=1e-5)
        assert want.user_events > 0 and want.category_affinity.any()  # the test compares something
