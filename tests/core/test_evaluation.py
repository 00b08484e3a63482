from __future__ import annotations

import math

import numpy as np
import pytest
from zerorec.evaluation import coverage, intra_list_diversity, novelty, ranking_metrics, top_k_excluding


def test_metrics_by_hand():
    recs = np.array([[1, 2, 3, -1], [4, 5, 6, 7]])
    truth = [np.array([2, 9]), np.array([8])]
    m = ranking_metrics(recs, truth, ks=(2, 4))
    # user 0: hit at rank 2 -> DCG 1/log2(3); IDCG over min(2, 2) = 1 + 1/log2(3)
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m["ndcg@2"] == pytest.approx(ndcg0 / 2)
    assert m["recall@2"] == pytest.approx(0.5 / 2)
    assert m["hr@2"] == pytest.approx(0.5)
    assert m["ndcg@4"] == pytest.approx(ndcg0 / 2)


def test_ndcg_idcg_uses_min_k_truth():
    m = ranking_metrics(np.array([[1, 0, 0]]), [np.array([1])], ks=(3,))
    assert m["ndcg@3"] == pytest.approx(1.0)


def test_coverage_diversity_novelty_by_hand():
    recs = np.array([[0, 1], [0, 2]])
    assert coverage(recs, 10, 2) == pytest.approx(0.3)
    feats = np.array([[1, 0], [1, 0], [0, 1]], dtype=float)
    # list 1: identical genres -> 0; list 2: orthogonal -> 1
    assert intra_list_diversity(recs, feats, 2) == pytest.approx(0.5)
    pop = np.array([4.0, 2.0, 1.0])
    # shares 4/8, 2/8, 1/8 -> -log2: 1, 2, 3; items 0,1,0,2 -> (1+2+1+3)/4
    assert novelty(recs, pop, 8, 2) == pytest.approx(7 / 4)


def test_top_k_excluding_never_returns_excluded():
    s = np.array([5.0, 4.0, 3.0, 3.0])
    assert top_k_excluding(s, np.array([0]), 3).tolist() == [1, 2, 3]
    assert top_k_excluding(s, np.array([0, 1, 2, 3]), 2).tolist() == [-1, -1]
