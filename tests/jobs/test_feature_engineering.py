"""The Spark feature job on a small generated export: exact counts (computed here with pandas), KV hashes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from zerorec.realtime import (
    ItemRecord,
    item_features_key,
    item_upsert_writes,
    user_category_features_key,
    user_features_key,
)
from zerorec.storage.kv import HGetAll
from zerorec.storage.kv_memory import MemoryKVStore
from zerorec.storage.objects_local import LocalObjectStore
from zerorec.tasks import EXPORT_SCHEMA

from jobs.feature_engineering.job import KINDS, FeatureJobConfig, run_features

AS_OF = datetime(2024, 6, 30, 12, 0, tzinfo=UTC)
WEIGHTS = {"view": 0.5, "click": 1.0, "like": 2.0, "add_to_cart": 3.0, "purchase": 4.0}


def _events(seed: int = 7, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kinds = np.array(["view", "click", "like", "add_to_cart", "purchase", "rating", "dislike", "hide"])
    # ages from 1 h in the future (must not count) to 40 days back; some exactly on window edges
    age_s = rng.uniform(-3600, 40 * 86400, n)
    age_s[:3] = [86400, 7 * 86400, 0]  # on the edges: 1 d and 7 d are out, 0 (= as_of) is in
    kind = rng.choice(kinds, n)
    value = np.where(kind == "rating", rng.choice([1.0, 2.5, 4.0, 5.0], n), np.nan)
    frame = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "source": "/zerorec/behavior",
            "user_id": [f"u{i}" for i in rng.integers(0, 12, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 25, n)],
            "kind": kind,
            "timestamp": [AS_OF - timedelta(milliseconds=int(a * 1000)) for a in age_s],
            "value": value,
            "context": None,
            "topic": "zerorec.behavior",
            "partition": 0,
            "offset": np.arange(n),
        }
    )
    dupes = frame.iloc[:20].copy()  # a re-export repeats rows: they must count once
    return pd.concat([frame, dupes], ignore_index=True)


def _put_export(objects: LocalObjectStore, prefix: str, frame: pd.DataFrame) -> None:
    """Lay the frame out as the worker's export does: <prefix>/<date>/part-*.parquet."""
    dates = frame["timestamp"].map(lambda t: t.date().isoformat())
    for n, (day, part) in enumerate(frame.groupby(dates)):
        table = pa.Table.from_pandas(part.reset_index(drop=True), schema=EXPORT_SCHEMA, preserve_index=False)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        objects.put(f"{prefix}/{day}/part-test-{n:04d}.parquet", sink.getvalue())


def _weight(kind: str, value: float) -> float:
    if kind in ("dislike", "hide"):  # negative feedback: no affinity
        return 0.0
    if kind == "rating" and not np.isnan(value):
        return max(0.0, (value - 2.5) / 2.5) + 0.2
    return WEIGHTS.get(kind, 1.0)


def _expected(frame: pd.DataFrame, cats: dict[str, list[str]]) -> dict[str, Any]:
    ev = frame.drop_duplicates("event_id")
    ev = ev[ev["timestamp"] <= AS_OF]
    age = AS_OF - ev["timestamp"]
    w30 = ev[age < timedelta(days=30)]
    items = {
        i: {f"cnt_{d}d": int((g["timestamp"] > AS_OF - timedelta(days=d)).sum()) for d in (1, 7, 30)}
        for i, g in w30.groupby("item_id")
    }
    users: dict[str, dict[str, int]] = {}
    for u, g in ev.groupby("user_id"):
        recent = g[g["timestamp"] > AS_OF - timedelta(days=30)]
        row = {f"n_{k}": int((recent["kind"] == k).sum()) for k in KINDS}
        row["n_total"] = len(recent)
        row["last_active"] = int(g["timestamp"].max().timestamp())
        users[u] = row
    affinity: dict[str, dict[str, float]] = {}
    for r in w30.itertuples():
        for c in cats.get(r.item_id, []):
            per_user = affinity.setdefault(r.user_id, {})
            per_user[c] = per_user.get(c, 0.0) + _weight(r.kind, r.value)
    return {"items": items, "users": users, "affinity": affinity}


def _categories() -> dict[str, list[str]]:
    names = ["books", "music", "film"]
    return {f"i{i}": [names[i % 3]] + (["sale"] if i % 4 == 0 else []) for i in range(25) if i != 24}


def test_features_from_the_object_store_match_pandas(spark: Any, tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path / "objects")
    kv = MemoryKVStore()
    frame = _events()
    _put_export(objects, "exports/events", frame)
    cats = _categories()
    kv.write([op for i, c in cats.items() for op in item_upsert_writes(ItemRecord(i, categories=tuple(c)))])
    kv.write([op for op in item_upsert_writes(ItemRecord("stale"))])  # a stale hash: must be replaced
    report = run_features(FeatureJobConfig(as_of=AS_OF, kv_batch=7), objects, kv, spark=spark)
    want = _expected(frame, cats)

    assert report["rows"] == {
        "item_popularity": len(want["items"]),
        "user_activity": len(want["users"]),
        "user_category_affinity": sum(len(v) for v in want["affinity"].values()),
    }
    assert report["kv_keys"]["item_popularity"] == len(want["items"])
    # Parquet written back under features/<date>/<table>/
    pop_key = "features/2024-06-30/item_popularity/part-00000.parquet"
    assert pop_key in report["objects"]
    pop = pd.read_parquet(io.BytesIO(objects.get(pop_key))).set_index("item_id")
    assert {i: {k: int(v) for k, v in row.items()} for i, row in pop.to_dict("index").items()} == want[
        "items"
    ]
    act_key = "features/2024-06-30/user_activity/part-00000.parquet"
    act = pd.read_parquet(io.BytesIO(objects.get(act_key))).set_index("user_id")
    assert {u: {k: int(v) for k, v in row.items()} for u, row in act.to_dict("index").items()} == want[
        "users"
    ]

    # KV: hashes per item / user, strings
    results = kv.read(
        [HGetAll(item_features_key(i)) for i in want["items"]]
        + [HGetAll(user_features_key(u)) for u in want["users"]]
        + [HGetAll(user_category_features_key(u)) for u in want["affinity"]]
    )
    n_items, n_users = len(want["items"]), len(want["users"])
    for (i, expect), got in zip(want["items"].items(), results[:n_items], strict=True):
        assert {k: int(got[k]) for k in expect} == expect, i
        assert got["as_of"] == "2024-06-30T12:00:00Z"
    for (u, expect), got in zip(want["users"].items(), results[n_items : n_items + n_users], strict=True):
        assert {k: int(got[k]) for k in expect} == expect, u
    for (u, expect), got in zip(want["affinity"].items(), results[n_items + n_users :], strict=True):
        assert set(got) == set(expect), u
        for c, v in expect.items():
            assert float(got[c]) == pytest.approx(v, abs=1e-5)


def test_local_path_and_catalogue_file_without_kv(spark: Any, tmp_path: Path) -> None:
    frame = _events(seed=3, n=150)
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pandas(frame, schema=EXPORT_SCHEMA, preserve_index=False), path)
    cats = _categories()
    catalogue = tmp_path / "items.csv"
    pd.DataFrame({"item_id": list(cats), "categories": ["|".join(c) for c in cats.values()]}).to_csv(
        catalogue, index=False
    )
    objects = LocalObjectStore(tmp_path / "objects")
    config = FeatureJobConfig(events_path=path, catalogue_path=catalogue, as_of=AS_OF, write_kv=False)
    report = run_features(config, objects, None, spark=spark)
    want = _expected(frame, cats)
    aff_key = "features/2024-06-30/user_category_affinity/part-00000.parquet"
    aff = pd.read_parquet(io.BytesIO(objects.get(aff_key)))
    got = {(r.user_id, r.category): r.affinity for r in aff.itertuples()}
    expect = {(u, c): v for u, per in want["affinity"].items() for c, v in per.items()}
    assert got.keys() == expect.keys()
    assert all(got[k] == pytest.approx(v, abs=1e-9) for k, v in expect.items())
    assert report["kv_keys"] == {} and report["input_objects"] == 0
    assert json.dumps(report)  # JSON-able
