"""Reranker: each rule, explanations, stability, edge cases and speed."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest
from zerorec.errors import InvalidInputError
from zerorec.rerank import Candidate, RerankConfig, rerank

PLAIN = RerankConfig(diversity=0.0, freshness_weight=0.0)
NOW = 1_700_000_000.0
DAY = 86400.0


def ids(items: list) -> list:
    return [r.item_id for r in items]


def test_pure_relevance_keeps_score_order_and_provenance() -> None:
    cands = [("a", 0.2, "als"), ("b", 0.9, "itemcf"), Candidate("c", 0.5, "hot")]
    out = rerank(cands, 3, PLAIN)
    assert ids(out) == ["b", "c", "a"]
    assert [r.position for r in out] == [1, 2, 0]
    assert [r.channel for r in out] == ["itemcf", "hot", "als"]
    assert out[0].reasons == ("found by itemcf",)
    assert out[0].original_score == 0.9
    assert out[0].score >= out[1].score >= out[2].score


def test_ties_break_by_original_order() -> None:
    cands = [(f"i{k}", 1.0, "als") for k in range(6)]
    assert ids(rerank(cands, 6, PLAIN)) == [f"i{k}" for k in range(6)]
    assert ids(rerank(cands, 6, RerankConfig(diversity=0.5))) == [f"i{k}" for k in range(6)]
    assert rerank(cands, 4) == rerank(cands, 4)  # deterministic


def test_seen_filter_and_duplicates() -> None:
    cands = [("a", 0.9, "als"), ("b", 0.8, "als"), ("a", 0.7, "hot"), ("c", 0.1, "fresh")]
    out = rerank(cands, 10, PLAIN, seen={"b"})
    assert ids(out) == ["a", "c"] and out[0].channel == "als"
    cfg = RerankConfig(diversity=0.0, freshness_weight=0.0, filter_seen=False)
    assert ids(rerank(cands, 10, cfg, seen={"b"})) == ["a", "b", "c"]


def test_empty_and_n_edge_cases() -> None:
    assert rerank([], 5) == []
    assert rerank([("a", 1.0, "als")], 0) == []
    assert rerank([("a", 1.0, "als")], 3, seen=["a"]) == []
    assert len(rerank([("a", 1.0, "als"), ("b", 0.5, "als")], 50)) == 2  # n larger than candidates
    with pytest.raises(InvalidInputError):
        rerank([("a", 1.0, "als")], -1)
    with pytest.raises(InvalidInputError):
        rerank([("a", float("nan"), "als")], 1)
    with pytest.raises(InvalidInputError):
        rerank([("a", 1.0)], 1)  # type: ignore[list-item]
    with pytest.raises(InvalidInputError):
        RerankConfig(diversity=1.5)
    with pytest.raises(InvalidInputError):
        RerankConfig(max_per_category=0)


def test_freshness_boost_moves_new_item_up() -> None:
    # Scores are min-max normalised over the candidates ("low" anchors 0), then the boost is added.
    cands = [("old1", 1.0, "als"), ("old2", 0.95, "als"), ("old3", 0.9, "als"), ("new", 0.85, "fresh")]
    cands.append(("low", 0.0, "hot"))
    created = {"old1": NOW - 900 * DAY, "old2": NOW - 900 * DAY, "old3": NOW - 900 * DAY, "new": NOW - DAY}
    cfg = RerankConfig(diversity=0.0, freshness_weight=0.5, freshness_half_life_days=7)
    out = rerank(cands, 4, cfg, created_at=created, now=NOW)
    assert ids(out) == ["new", "old1", "old2", "old3"]
    assert "moved up 3 by freshness" in out[0].reasons
    assert "moved down 1 by freshness" in out[1].reasons
    # Half-life: a 7-day-old item gets half the boost of a brand-new one.
    cfg_small = RerankConfig(diversity=0.0, freshness_weight=0.2, freshness_half_life_days=7)
    two = [("a", 1.0, "als"), ("b", 0.0, "als")]
    s = {
        r.item_id: r.score
        for r in rerank(two, 2, cfg_small, created_at={"a": NOW, "b": NOW - 7 * DAY}, now=NOW)
    }
    assert s["a"] == pytest.approx(1.2) and s["b"] == pytest.approx(0.1)
    # datetimes work too; no created_at -> no boost.
    when = datetime.fromtimestamp(NOW, tz=UTC)
    assert ids(rerank(cands, 4, cfg, created_at={"new": when}, now=when))[0] == "new"
    assert ids(rerank(cands, 4, cfg, now=NOW))[0] == "old1"


def test_mmr_diversity_with_embeddings() -> None:
    # a1..a3 near-duplicates (same direction), b1 different and slightly less relevant.
    cands = [("a1", 1.0, "als"), ("a2", 0.98, "als"), ("a3", 0.96, "als"), ("b1", 0.9, "vector")]
    emb = np.array([[1, 0], [1, 0.01], [1, -0.01], [0, 1]], dtype=np.float32)
    assert ids(rerank(cands, 4, PLAIN, embeddings=emb)) == ["a1", "a2", "a3", "b1"]
    out = rerank(cands, 4, RerankConfig(diversity=0.5, freshness_weight=0.0), embeddings=emb)
    assert ids(out)[:2] == ["a1", "b1"]
    assert "moved up 2 for diversity" in out[1].reasons
    assert any(r.startswith("moved down 1 for diversity") for r in out[2].reasons)
    # A mapping item_id -> vector gives the same result; unknown items have no similarity.
    as_map = {c[0]: emb[k] for k, c in enumerate(cands)}
    assert ids(rerank(cands, 4, RerankConfig(diversity=0.5), embeddings=as_map)) == ids(out)
    with pytest.raises(InvalidInputError):
        rerank(cands, 2, embeddings=emb[:2])


def test_mmr_diversity_with_genre_jaccard() -> None:
    cands = [("d1", 1.0, "als"), ("d2", 0.97, "als"), ("c1", 0.9, "hot")]
    cats = {"d1": ["Drama"], "d2": ["Drama"], "c1": ["Comedy"]}
    assert ids(rerank(cands, 3, PLAIN, categories=cats)) == ["d1", "d2", "c1"]
    assert ids(rerank(cands, 3, RerankConfig(diversity=0.5), categories=cats)) == ["d1", "c1", "d2"]


def test_category_cap() -> None:
    cands = [
        ("d1", 1.0, "als"),
        ("d2", 0.9, "als"),
        ("d3", 0.8, "als"),
        ("c1", 0.5, "hot"),
        ("x", 0.4, "hot"),
    ]
    cats = {"d1": ["Drama"], "d2": ["Drama", "Romance"], "d3": ["Drama"], "c1": ["Comedy"]}
    cfg = RerankConfig(diversity=0.0, freshness_weight=0.0, max_per_category=2)
    out = rerank(cands, 5, cfg, categories=cats)
    assert ids(out) == ["d1", "d2", "c1", "x"]  # d3 capped; fewer than n when everything left is capped
    assert "moved up 1: capped category Drama" in out[2].reasons
    assert not any("diversity" in r for r in out[2].reasons)


def test_reasons_are_strings_and_positions_refer_to_input() -> None:
    rng = np.random.default_rng(0)
    cands = [(f"i{k}", float(s), ["als", "hot"][k % 2]) for k, s in enumerate(rng.random(50))]
    cats = {f"i{k}": [f"g{k % 5}", f"g{(k * 7) % 5}"] for k in range(50)}
    out = rerank(cands, 20, RerankConfig(diversity=0.4, max_per_category=12), categories=cats, seen={"i3"})
    assert len(out) == 20 and len(set(ids(out))) == 20 and "i3" not in ids(out)
    for r in out:
        assert cands[r.position][0] == r.item_id
        assert r.reasons[0] == f"found by {r.channel}"


def test_500_candidates_honour_every_rule_at_once() -> None:
    """The serving size (speed is measured by `zerorec bench serve`, not here)."""
    rng = np.random.default_rng(1)
    m = 500
    cands = [(f"i{k}", float(s), "als") for k, s in enumerate(rng.random(m))]
    emb = rng.normal(size=(m, 32)).astype(np.float32)
    cats = {f"i{k}": [f"g{rng.integers(20)}", f"g{rng.integers(20)}"] for k in range(m)}
    created = {f"i{k}": NOW - float(rng.integers(0, 400)) * DAY for k in range(m)}
    cfg = RerankConfig(diversity=0.3, max_per_category=4)
    seen = {f"i{k}" for k in range(0, m, 10)}
    for kwargs in ({"embeddings": emb}, {}):
        out = rerank(cands, 20, cfg, categories=cats, created_at=created, seen=seen, now=NOW, **kwargs)
        ids = [o.item_id for o in out]
        assert len(ids) == 20 == len(set(ids)) and not seen & set(ids)
        per_category = Counter(c for i in ids for c in set(cats[i]))
        assert max(per_category.values()) <= 4
