"""Index-backed recall: each channel's index answer is the brute-force answer (exact indexes) or
most of it (HNSW), and a request allocates nothing the size of the catalogue."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from zerorec.data import InteractionData, SyntheticConfig, generate
from zerorec.pipeline import PipelineConfig, Recommender, train_recommender
from zerorec.recall.base import UserQuery, top_n
from zerorec.recall.channels import (
    CHANNELS,
    ALSChannel,
    EASEChannel,
    FreshChannel,
    HotChannel,
    ItemCFChannel,
    VectorChannel,
)
from zerorec.recall.index import ItemIndex, NeighbourLists


@pytest.fixture(scope="module")
def data() -> InteractionData:
    inter, items = generate(SyntheticConfig(n_users=200, n_items=600, seed=3))
    return InteractionData.from_frame(inter, items)


def _als(data: InteractionData) -> ALSChannel:
    return ALSChannel(factors=16, iterations=5).fit(data)


CHANNEL_MAKERS = {
    "ease dense": lambda d: EASEChannel(l2=50, min_count=1).fit(d),
    "ease capped head": lambda d: EASEChannel(l2=50, min_count=1, max_items=150).fit(d),
    "ease lists": lambda d: EASEChannel(l2=50, min_count=1, topk=40).fit(d),
    "als": _als,
    "itemcf": lambda d: ItemCFChannel(k=20).fit(d),
    "hot": lambda d: HotChannel(list_len=300).fit(d),
    "vector": lambda d: VectorChannel(factors=16).fit(d, _als(d).item_embeddings()),
    "fresh": lambda d: FreshChannel().fit(d),
}


@pytest.mark.parametrize("name", list(CHANNEL_MAKERS))
def test_index_answer_is_the_brute_force_answer(name: str, data: InteractionData) -> None:
    """recall(n) from the index = the n best of the whole-catalogue `score` (same scores in the same
    order; items equal but for ties), with exclusions, after a round trip through the files; and
    score_items = score at those items."""
    channel = CHANNEL_MAKERS[name](data)
    loaded = type(channel).from_files(channel.to_files())
    rng = np.random.default_rng(0)
    for user in range(0, data.n_users, 9):
        exclude = rng.choice(data.n_items, 20, replace=False)
        for ch in (channel, loaded):
            q = UserQuery.from_data(data, user)
            dense = ch.score(q)
            want = top_n(dense, 50, np.concatenate([q.history, exclude]))
            got = ch.recall(UserQuery.from_data(data, user), 50, exclude)
            if name in ("itemcf", "ease lists"):  # lists answer the items they reach (score > 0)
                want = want[dense[want] > 0]
            np.testing.assert_allclose(got.scores, dense[want], rtol=1e-5, atol=1e-6)
            ties = np.isin(got.scores, dense[want][np.diff(dense[want], append=np.inf) == 0])
            assert got.items[~ties].tolist() == want[~ties].tolist()
            assert not set(got.items.tolist()) & (set(exclude.tolist()) | set(q.history.tolist()))
            items = rng.choice(data.n_items, 64, replace=False)
            np.testing.assert_allclose(
                ch.score_items(UserQuery.from_data(data, user), items), dense[items], rtol=1e-5, atol=1e-6
            )


def test_bundle_files_are_plain_arrays(data: InteractionData) -> None:
    """What another trainer (the Spark engine) writes: npy/npz arrays and params.json only; a faiss
    file only for an approximate (HNSW) index."""
    for make in CHANNEL_MAKERS.values():
        files = make(data).to_files()
        assert {f.rsplit(".", 1)[1] for f in files} <= {"json", "npy", "npz"}, files.keys()
    assert "user_factors.npy" not in _als(data).to_files()  # no user-sized arrays


def test_hnsw_search_finds_most_of_the_exact_top() -> None:
    """Above `exact_below` the index is HNSW: recall@50 of its answer vs the exact one >= 0.95."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((6000, 16)).astype(np.float16)
    exact = ItemIndex(vectors)
    approx = ItemIndex(vectors, exact_below=1000)
    assert exact.exact and not approx.exact
    found = []
    for q in rng.standard_normal((40, 16)).astype(np.float32):
        want = set(exact.search(q, 50)[0].tolist())
        found.append(len(want & set(approx.search(q, 50)[0].tolist())) / 50)
    assert np.mean(found) >= 0.95


def test_neighbour_lists_gather_equals_the_sparse_product() -> None:
    import scipy.sparse as sp

    rng = np.random.default_rng(2)
    m = sp.random(300, 300, density=0.05, random_state=3, dtype=np.float32, format="csr")
    lists = NeighbourLists.from_csr(m)
    rows = rng.choice(300, 25, replace=False)
    w = rng.random(25)
    want = np.asarray(m[rows].T @ w).ravel()
    np.testing.assert_allclose(lists.dense(rows, w), want, rtol=1e-5, atol=1e-7)


def test_hot_boosted_cold_start_matches_the_catalogue_reference(data: InteractionData) -> None:
    hot = HotChannel(list_len=300).fit(data)
    cats = {hot.category_names[0]: 2.0, hot.category_names[3]: 0.5}
    q = UserQuery()
    ref = hot.boosted_scores(q, cats)
    got = hot.boosted(UserQuery(), cats, 40)
    np.testing.assert_allclose(got.scores, ref[top_n(ref, 40)], rtol=1e-6)


def _padded(n_extra: int) -> tuple:  # type: ignore[type-arg]
    """Interactions, and items padded with ``n_extra`` never-seen items (a larger catalogue)."""
    import pandas as pd

    inter, items = generate(SyntheticConfig(n_users=150, n_items=500, seed=5))
    if n_extra:
        extra = pd.DataFrame(
            {
                "item_id": [f"x{i}" for i in range(n_extra)],
                "title": "x",
                "categories": [["drama"]] * n_extra,
                "created_at": int(inter["timestamp"].min()),
            }
        )
        items = pd.concat([items, extra], ignore_index=True)
    return inter, items


def _request_peak(rec: Recommender, users: list[str]) -> int:
    """The largest Python/numpy allocation peak of one recommend() over ``users``."""
    peaks = []
    for user in users:
        rec.recommend(user, 10)  # warm (lazy indexes, caches)
        tracemalloc.start()
        rec.recommend(user, 10)
        rec.recommend(None, 10, recent_items=[rec.data.item_ids[3]])
        rec.recommend(None, 10, categories={"drama": 1.0})
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return max(peaks)


def test_no_request_allocates_a_catalogue_sized_array(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same users and history with 200,000 more items in the catalogue: a request's allocation
    peak stays what it is for 500 items (one float32 array over the catalogue alone would be 0.8 MB),
    and the whole-catalogue `score` is never called, in training's ranker rows or in serving."""

    def refuse(self, query):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{self.name}: the dense scorer was called")

    for cls in CHANNELS.values():
        monkeypatch.setattr(cls, "score", refuse)
    config = PipelineConfig(als_factors=8, als_iterations=3, n_candidates=100, ranker_epochs=1)
    small, _ = train_recommender(*_padded(0), config=config)
    big, _ = train_recommender(*_padded(200_000), config=config, train_ranker=False)
    big.scorer, small.scorer = None, None  # the same scoring path for both (fallback ranker)
    assert big.data.n_items == small.data.n_items + 200_000
    users = [str(u) for u in small.data.user_ids[:5]]
    small_peak, big_peak = _request_peak(small, users), _request_peak(big, users)
    assert big_peak < 200_000 * 4, (small_peak, big_peak)
    assert big_peak < 2 * small_peak + 64_000, (small_peak, big_peak)
