"""Serving asks recall for n candidates: `fill` tops overlapping quotas up from deeper lists."""

from __future__ import annotations

import numpy as np
import pytest
from zerorec.data import SyntheticConfig, generate
from zerorec.pipeline import PipelineConfig, train_recommender
from zerorec.recall.base import Candidates
from zerorec.recall.merge import fill, merge

TINY = SyntheticConfig(n_users=120, n_items=300, mean_interactions=15, seed=3)
CFG = PipelineConfig(
    als_factors=8,
    als_iterations=3,
    n_candidates=100,
    quotas={"ease": 40, "itemcf": 20, "als": 15, "vector": 10, "hot": 10, "fresh": 5},
)


def cands(items: list[int], scores: list[float], channel: str) -> Candidates:
    return Candidates(np.array(items, np.int64), np.array(scores, np.float32), channel)


def test_fill_keeps_the_merge_and_takes_next_best_items_rank_by_rank() -> None:
    a = cands([1, 2], [0.9, 0.8], "ease")
    b = cands([2, 1], [3.0, 2.0], "hot")
    merged = merge([a, b])
    assert merged.items.tolist() == [1, 2]  # the quotas overlap: 2 items, not 4
    deep = [
        cands([1, 2, 3, 4, 7], [0.9, 0.8, 0.7, 0.6, 0.5], "ease"),
        cands([2, 1, 5, 3], [3, 2, 1, 0.5], "hot"),
    ]
    out = fill(merged, deep, 5)
    assert out.items.tolist() == [1, 2, 3, 5, 4]
    assert out.channel == ["ease", "hot", "ease", "hot", "ease"]
    np.testing.assert_array_equal(out.channel_scores[:2], merged.channel_scores)
    row3 = out.items.tolist().index(3)
    assert out.found_by(row3) == ["ease"]  # hot stopped at 5, before its 3
    assert out.channel_scores[row3].tolist()[0] == pytest.approx(0.7)
    assert out.found_by(out.items.tolist().index(5)) == ["hot"]


def test_fill_stops_when_the_channels_run_out_and_never_repeats() -> None:
    a = cands([1], [1.0], "ease")
    merged = merge([a])
    out = fill(merged, [cands([1, 2], [1.0, 0.5], "ease")], 10)
    assert out.items.tolist() == [1, 2]
    assert fill(out, [cands([1, 2], [1.0, 0.5], "ease")], 2) is out  # already long enough


def test_candidates_fill_to_n_with_the_quota_merge_as_prefix() -> None:
    inter, items = generate(TINY)
    rec, _ = train_recommender(inter, items, CFG, train_ranker=False)
    for user in sorted(rec.data.user_index)[:20]:
        q = rec.query(user)
        vectors = rec.score_vectors(q)  # the brute-force reference of the channels' answers
        lists = rec.retrieve(q, 150)
        plain = rec.candidates(q, 150, None, lists)
        full = rec.candidates(q, 150, None, lists, fill=True)
        k = len(plain)
        assert len(full) == 150
        assert full.items[:k].tolist() == plain.items.tolist() and full.channel[:k] == plain.channel
        assert len(set(full.items.tolist())) == 150
        assert not set(full.items.tolist()) & set(q.history.tolist())
        # Provenance is each channel's own score.
        for row in range(len(full)):
            for c, name in enumerate(full.channel_names):
                s = full.channel_scores[row, c]
                if np.isfinite(s):
                    assert s == pytest.approx(float(vectors[name][full.items[row]]), rel=1e-6)
