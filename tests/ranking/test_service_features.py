"""The ranker's service features: point in time in training, one KV round trip at serving, defaults."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from zerorec.pipeline import CHANNEL_ORDER, blend_scores
from zerorec.ranking.features import (
    DEVICES,
    SERVICE_DENSE,
    SPARK_DENSE,
    SURFACES,
    EventLog,
    ServiceSnapshot,
    context_indices,
    mask_groups,
    read_service_features,
    service_dense,
    service_feature_reads,
    snapshot_from_kv,
)
from zerorec.realtime import (
    feature_hash_writes,
    item_features_key,
    rt_item_counts_key,
    rt_user_key,
    user_category_features_key,
    user_features_key,
)
from zerorec.storage.kv import HSet
from zerorec.storage.kv_memory import MemoryKVStore

DAY = 86_400
T = 1_700_000_000  # the request time of user "a"


def _log(rows: list[tuple[str, str, int, str]]) -> tuple[EventLog, dict[str, int], dict[str, int]]:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type"])
    users = {u: i for i, u in enumerate(sorted(frame["user_id"].unique()))}
    items = {it: i for i, it in enumerate(["x", "y", "z"])}
    genres = sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 1]], np.float64))  # x: g0, y: g1, z: both
    return EventLog.from_frame(frame, users, items, genres), users, items


def test_a_later_event_never_reaches_an_earlier_row() -> None:
    rows = [
        ("a", "x", T - 2 * DAY, "view"),
        ("a", "y", T, "purchase"),  # at the request time: counts
        ("b", "x", T - 30, "click"),  # 30 s before: last minute, hour, day...
        ("b", "x", T - 3 * DAY, "click"),
        ("b", "x", T + 1, "click"),  # one second later: must never count
        ("b", "y", T + 5 * DAY, "click"),  # later still
        ("a", "z", T + 10, "purchase"),  # the user's own later event: not in the user features
    ]
    log, users, _items = _log(rows)
    snap = log.snapshot(users["a"], np.array([0, 1, 2]), T)
    np.testing.assert_array_equal(snap.item_counts, [[1, 3, 3], [1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(snap.item_rt, [[1, 1], [1, 1], [0, 0]])  # y's purchase at T counts
    assert snap.user_events == 2 and snap.user_views == 1
    assert snap.user_rt == (1.0, 1.0)
    # affinity: view x (0.5 on g0), purchase y (4 on g1) -> x: 0.5/4.5, y: 4/4.5, z (both): 1
    np.testing.assert_allclose(snap.category_affinity, [0.5 / 4.5, 4 / 4.5, 1.0])
    later = log.snapshot(users["a"], np.array([0, 1, 2]), T + 10 * DAY)
    assert later.item_counts[0, 2] == 4 and later.item_counts[2, 2] == 1  # the later events, now past


def test_kv_snapshot_matches_the_point_in_time_one_in_one_round_trip() -> None:
    """What feature-engineering and flink-realtime write, read at serving, gives the training values."""
    log, users, _items = _log(
        [("a", "x", T - 2 * DAY, "view"), ("a", "y", T - 20, "click"), ("b", "x", T - 100, "click")]
    )
    want = log.snapshot(users["a"], np.array([0, 1, 2]), T)
    kv = MemoryKVStore()
    kv.write(
        feature_hash_writes(item_features_key("x"), {"cnt_1d": 1, "cnt_7d": 2, "cnt_30d": 2, "as_of": "z"})
        + feature_hash_writes(item_features_key("y"), {"cnt_1d": 1, "cnt_7d": 1, "cnt_30d": 1})
        + feature_hash_writes(user_features_key("a"), {"n_total": 2, "n_view": 1, "n_click": 1})
        + feature_hash_writes(user_category_features_key("a"), {"g0": 0.5, "g1": 1.0})
        + [
            HSet(rt_item_counts_key("y"), {str(T - 60): "1", "total": "9"}),
            HSet(rt_item_counts_key("x"), {str(T - 120): "1", str(T - 7200): "5"}),  # 2 h ago: out
            HSet(rt_user_key("a"), {str(T - 60): "1"}),  # window start -> count, like the items
        ]
    )
    calls: list[int] = []
    read = kv.read

    def counting_read(ops: Any) -> list:
        calls.append(len(ops))
        return read(ops)

    kv.read = counting_read  # type: ignore[method-assign]
    got = read_service_features(kv, "a", ["x", "y", "z"], [["g0"], ["g1"], ["g0", "g1"]], float(T))
    assert len(calls) == 1  # one pipelined round trip for the user and every candidate
    np.testing.assert_array_equal(got.item_counts, want.item_counts)
    np.testing.assert_allclose(got.category_affinity, want.category_affinity)
    assert (got.user_events, got.user_views) == (want.user_events, want.user_views)
    np.testing.assert_array_equal(got.item_rt[:, 1], want.item_rt[:, 1])  # last hour
    assert got.user_rt[0] == 1.0


def test_missing_or_malformed_features_take_their_defaults() -> None:
    kv = MemoryKVStore()
    kv.write([HSet(item_features_key("x"), {"cnt_1d": "lots", "cnt_7d": "nan", "cnt_30d": "4"})])
    kv.write([HSet(rt_item_counts_key("x"), {"garbage": "1", "123": "x"})])
    snap = read_service_features(kv, None, ["x", "nope"], [[], []], float(T))
    np.testing.assert_array_equal(snap.item_counts, [[0, 0, 4], [0, 0, 0]])
    np.testing.assert_array_equal(snap.item_rt, 0)
    assert snap.user_events == 0 and snap.user_rt == (0.0, 0.0)
    dense = service_dense(snap)
    assert dense.shape == (2, len(SERVICE_DENSE)) and np.isfinite(dense).all()
    # results of the wrong shape (a degraded KV's placeholders) are defaults too
    ops = service_feature_reads("u", ["x"])
    odd = snapshot_from_kv([None] * len(ops), ["x"], [["g"]], float(T))
    assert not service_dense(odd).any()


def test_context_fields_defaults_and_schema() -> None:
    monday_9h = 1_700_470_800  # 2023-11-20 09:00 UTC, a Monday
    assert context_indices({}, monday_9h).tolist() == [10, 1, 0, 0]
    ctx = {"hour": 23, "weekday": "6", "device": "ios", "surface": "search"}
    assert context_indices(ctx, monday_9h).tolist() == [
        24,
        7,
        DEVICES.index("ios") + 1,
        SURFACES.index("search") + 1,
    ]
    bad = {"hour": 99, "weekday": True, "device": "toaster", "surface": ["x"]}
    assert context_indices(bad, monday_9h).tolist() == [10, 1, 0, 0]  # bad values: the defaults
    assert context_indices(ctx, monday_9h, groups=("spark",)).tolist() == [0, 0, 0, 0]


def test_switched_off_groups_hold_defaults() -> None:
    snap = ServiceSnapshot(np.ones((2, 3)), np.ones((2, 2)), np.ones(2), 4.0, 1.0, (1.0, 2.0))
    full = service_dense(snap)
    assert full[:, : len(SPARK_DENSE)].any() and full[:, len(SPARK_DENSE) :].any()
    assert not service_dense(snap, groups=("context",)).any()
    base = ["vector_score", "vector_logrank", "vector_found", "other"]
    sparse = np.ones((2, 3 + 4), np.int64)
    dense = np.ones((2, len(base) + len(SERVICE_DENSE)), np.float32)
    mask_groups(sparse, dense, ("spark",), base, 3, n_items=99)
    assert dense[:, 0].tolist() == [0, 0] and dense[:, 1] == pytest.approx(np.log1p(99))
    assert dense[:, 3].tolist() == [1, 1]  # not a group's column
    assert dense[:, 4 : 4 + len(SPARK_DENSE)].all() and not dense[:, 4 + len(SPARK_DENSE) :].any()
    assert sparse[:, :3].all() and not sparse[:, 3:].any()


def test_blend_weight_zero_is_the_ranker_and_one_is_the_channel() -> None:
    probs = np.array([0.9, 0.1, 0.5, 0.3], np.float32)
    signals = np.full((4, len(CHANNEL_ORDER), 2), np.nan)
    signals[:, CHANNEL_ORDER.index("ease"), 1] = [3, 0, 1, 500]  # item 3 is off the list
    np.testing.assert_array_equal(blend_scores(probs, signals, "ease", 0.0), probs)
    assert np.argsort(-blend_scores(probs, signals, "ease", 1.0)).tolist() == [1, 2, 0, 3]
    assert np.argsort(-blend_scores(probs, signals, None, 1.0)).tolist() == [0, 2, 3, 1]
