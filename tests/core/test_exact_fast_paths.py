"""The shortcuts in hot kernels and feature ranks give exactly what the plain formulas give."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from zerorec.features import channel_signals
from zerorec.recall.base import Candidates
from zerorec.recall.channels import HotChannel


def plain_kernel(hot: HotChannel, now: float, tau: float) -> np.ndarray:
    centers = hot.origin + (np.arange(hot.counts.shape[1]) + 0.5) * (hot.bin_days * 86_400)
    return np.exp(-np.abs(now - centers) / tau).astype(np.float32)


@pytest.mark.parametrize("tau_days", [0.01, 0.5, 1.0, 7.0, 20.0, 365.0])
def test_hot_kernel_is_the_full_exp_bit_for_bit(tau_days: float) -> None:
    rng = np.random.default_rng(int(tau_days * 100))
    hot = HotChannel(bin_days=1.0)
    hot.origin = 1.0e9
    hot.counts = sp.csr_matrix(rng.integers(0, 3, size=(40, 3000)).astype(np.float32))  # items x bins
    for now in [*rng.uniform(hot.origin - 1e7, hot.origin + 3000 * 86_400 + 1e7, 50), hot.origin]:
        got = hot._kernel(now, tau_days * 86_400)
        want = plain_kernel(hot, now, tau_days * 86_400)
        assert got.dtype == want.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # same bits, zeros too
        items = rng.choice(40, 10, replace=False)
        full = np.asarray(hot.counts @ want).ravel()
        np.testing.assert_array_equal(hot.popularity_at(now, tau_days), full)
        np.testing.assert_array_equal(hot.popularity_at(now, tau_days, items), full[items])


def plain_rank(scores: np.ndarray, history: np.ndarray, items: np.ndarray) -> np.ndarray:
    s = np.where(np.isfinite(scores), scores, -np.inf).astype(np.float64)
    s[history] = -np.inf
    ordered = np.sort(s)[::-1]
    return np.searchsorted(-ordered, -s[items], side="left").astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_signal_ranks_count_the_listed_items_scoring_strictly_higher(dtype: type) -> None:
    """A candidate's rank in a channel is how many items of the channel's top list score strictly
    higher (with the list the exact top, what a whole-catalogue count gives); off the list, the
    list's length (it ranks at least that deep)."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(1, 400))
        scores = (rng.integers(-5, 5, n).astype(dtype) * dtype(0.25)).astype(np.float32)  # many ties
        depth = int(rng.integers(1, n + 1))
        order = np.lexsort((np.arange(n), -scores))[:depth]
        listed = Candidates(order.astype(np.int64), scores[order], "ease")
        items = rng.choice(n, int(rng.integers(1, n + 1)), replace=False)
        got = channel_signals({"ease": listed}, {"ease": scores[items]}, items, ["ease", "als"])
        assert got.shape == (len(items), 2, 2) and np.isnan(got[:, 1]).all()  # als: absent
        np.testing.assert_array_equal(got[:, 0, 0], scores[items])
        on_list = np.isin(items, order)
        want = plain_rank(scores, np.zeros(0, np.int64), items)
        np.testing.assert_array_equal(got[on_list, 0, 1], want[on_list])
        assert (got[~on_list, 0, 1] == depth).all()


def test_ease_scores_the_same_before_and_after_widening() -> None:
    """A loaded EASE channel keeps the published float16 weights until `widen` (serving widens in
    the background): its scores are identical either way."""
    from zerorec.recall.base import UserQuery
    from zerorec.recall.channels import EASEChannel

    rng = np.random.default_rng(3)
    keep = np.sort(rng.choice(200, 150, replace=False))
    weights = (rng.standard_normal((150, 150)) * 0.05).astype(np.float16)
    ch = EASEChannel.from_state(
        {"l2": 1.0, "min_count": 1}, {"keep": keep, "weights": weights, "n_items": np.array([200])}
    )
    ch.n_items = 200
    ch._index()
    queries = [rng.choice(200, k, replace=False) for k in (0, 1, 7, 60)]
    narrow = [ch.score(UserQuery(user=None, history=h, times=np.zeros(len(h)))) for h in queries]
    assert ch.weights.dtype == np.float16
    ch.widen()
    assert ch.weights.dtype == np.float32
    for h, before in zip(queries, narrow, strict=True):
        np.testing.assert_array_equal(
            before, ch.score(UserQuery(user=None, history=h, times=np.zeros(len(h))))
        )
