"""HotChannel.popularity_at for a few items equals the catalogue-wide sums at those items."""

from __future__ import annotations

import numpy as np
from zerorec.data import SyntheticConfig, generate
from zerorec.data.interactions import InteractionData
from zerorec.recall.channels import HotChannel


def test_popularity_for_items_is_the_full_vector_at_those_items() -> None:
    inter, items = generate(SyntheticConfig(n_users=80, n_items=200, mean_interactions=20, seed=5))
    data = InteractionData.from_frame(inter, items)
    hot = HotChannel(tau_days=7).fit(data)
    rng = np.random.default_rng(0)
    cand = rng.permutation(data.n_items)[:50]
    for now, tau in ((data.max_time(), None), (data.max_time() - 86_400 * 30, 2.0), (0.0, 90.0)):
        full = hot.popularity_at(now, tau)
        np.testing.assert_array_equal(hot.popularity_at(now, tau, cand), full[cand])
    reloaded = HotChannel.from_files(hot.to_files())
    np.testing.assert_array_equal(reloaded.popularity_at(1e9, 3.0, cand), hot.popularity_at(1e9, 3.0)[cand])
