from __future__ import annotations

import numpy as np
import pytest
from zerorec.data import InteractionData, SyntheticConfig, generate
from zerorec.errors import IntegrityError
from zerorec.recall.base import Candidates, UserQuery
from zerorec.recall.channels import (
    ALSChannel,
    EASEChannel,
    FreshChannel,
    HotChannel,
    ItemCFChannel,
    VectorChannel,
)
from zerorec.recall.merge import merge


@pytest.fixture(scope="module")
def data() -> InteractionData:
    inter, items = generate(SyntheticConfig(n_users=120, n_items=300, seed=1))
    return InteractionData.from_frame(inter, items)


CHANNELS = [
    lambda: EASEChannel(l2=50, min_count=1),
    lambda: ALSChannel(factors=16, iterations=5),
    lambda: ItemCFChannel(k=20),
    lambda: HotChannel(),
    lambda: VectorChannel(factors=16),
    lambda: FreshChannel(),
]


@pytest.mark.parametrize("make", CHANNELS)
def test_channel_contract(make, data):
    channel = make().fit(data)
    q = UserQuery.from_data(data, 3)
    scores = channel.score(q)
    assert scores.shape == (data.n_items,) and scores.dtype == np.float32
    cands = channel.recall(q, 25)
    assert isinstance(cands, Candidates) and cands.channel == channel.name
    assert 0 < len(cands) <= 25
    assert not set(cands.items.tolist()) & set(q.history.tolist())  # never a seen item
    assert np.all(np.diff(cands.scores) <= 1e-6)  # best first
    # safe files only, and an identical channel after the round trip
    files = channel.to_files()
    assert all(name.rsplit(".", 1)[1] in ("json", "npy", "npz", "faiss") for name in files)
    loaded = type(channel).from_files(files)
    np.testing.assert_allclose(loaded.score(q), scores, rtol=1e-2, atol=1e-3)
    assert loaded.recall(q, 10).items[:3].tolist() == cands.items[:3].tolist()


def test_from_files_refuses_other_channel(data):
    files = HotChannel().fit(data).to_files()
    with pytest.raises(IntegrityError):
        FreshChannel.from_files(files)


def test_cold_start_query(data):
    q = UserQuery()  # unknown user, empty history
    assert len(HotChannel().fit(data).recall(q, 10)) == 10
    assert len(FreshChannel().fit(data).recall(q, 10)) == 10
    assert len(ItemCFChannel().fit(data).recall(q, 10)) == 0  # nothing to say without history
    als = ALSChannel(factors=8, iterations=3).fit(data)
    q2 = UserQuery(history=data.history(5)[0])  # unknown user with a history: solved on the fly
    top = als.recall(q2, 10).items
    assert len(top) == 10


def test_hot_per_category(data):
    hot = HotChannel().fit(data)
    cat = hot.category_names[0]
    s = hot.category_scores(cat)
    members = [i for i, c in enumerate(data.item_categories) if cat in c]
    assert set(np.flatnonzero(np.isfinite(s)).tolist()) == set(members)
    assert not np.isfinite(hot.category_scores("no-such-category")).any()


def test_hot_is_time_aware():
    # item 0 popular early, item 1 popular late: the answer depends on the reference time
    import pandas as pd

    day = 86_400
    rows = [(f"u{i}", "0", i) for i in range(10)] + [(f"v{i}", "1", 400 * day + i) for i in range(10)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(weight=1.0)
    hot = HotChannel(tau_days=10).fit(InteractionData.from_frame(df))
    assert hot.recall(UserQuery(now=0.0), 1).items[0] == 0
    assert hot.recall(UserQuery(now=400.0 * day), 1).items[0] == 1


def test_merge_quotas_dedup_provenance():
    a = Candidates(np.array([1, 2, 3, 4]), np.array([0.9, 0.8, 0.7, 0.6], np.float32), "ease")
    b = Candidates(np.array([2, 5, 6]), np.array([3.0, 2.0, 1.0], np.float32), "hot")
    m = merge([a, b], quotas={"ease": 2, "hot": 2})
    # interleaved rank by rank: ease 1, hot 2, ease (2 taken -> 3), hot 5; quotas stop there
    assert m.items.tolist() == [1, 2, 3, 5]
    assert m.channel == ["ease", "hot", "ease", "hot"]
    row2 = m.items.tolist().index(2)
    assert m.channel_scores[row2].tolist() == pytest.approx([0.8, 3.0])  # both scores kept
    assert m.found_by(row2) == ["ease", "hot"]
    assert len(merge([a, b], limit=3)) == 3


def test_ease_matches_the_closed_form_in_float64(data):
    """The float32 Cholesky inverse gives Steck's B = I - P/diag(P) to float32 precision."""
    ch = EASEChannel(l2=50, min_count=1).fit(data)
    x = (data.matrix > 0).astype(np.float64).toarray()[:, ch.keep]
    p = np.linalg.inv(x.T @ x + 50 * np.eye(x.shape[1]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    assert np.abs(ch.weights - b).max() < 1e-4 * np.abs(b).max()


def test_spd_inverse_falls_back_when_not_positive_definite():
    from zerorec.recall.channels import _spd_inverse

    a = np.array([[1.0, 2.0], [2.0, 1.0]], np.float32)  # indefinite
    assert np.allclose(_spd_inverse(a.copy()), np.linalg.inv(a.astype(np.float64)), atol=1e-6)
    spd = np.array([[4.0, 1.0], [1.0, 3.0]], np.float32)
    assert np.allclose(_spd_inverse(spd.copy()), np.linalg.inv(spd.astype(np.float64)), atol=1e-6)


def test_merge_matches_a_reference_interleave():
    """Randomised check against the rank-by-rank definition (quotas, de-dup, limit, provenance)."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        answers = []
        for name in ("ease", "als", "hot")[: rng.integers(1, 4)]:
            n = int(rng.integers(0, 15))
            answers.append(
                Candidates(rng.choice(30, n, replace=False), rng.normal(size=n).astype(np.float32), name)
            )
        quotas = {"ease": int(rng.integers(0, 8)), "hot": int(rng.integers(0, 8))}
        limit = int(rng.integers(1, 25))
        m = merge(answers, quotas=quotas, limit=limit)
        # reference: round by round, each channel takes its next item not taken yet
        caps = [min(len(a), quotas.get(a.channel, len(a))) for a in answers]
        queues = [list(a.items) for a in answers]
        used, order, owner = [0] * len(answers), [], []
        while len(order) < limit and any(used[c] < caps[c] and queues[c] for c in range(len(answers))):
            for c in range(len(answers)):
                while used[c] < caps[c] and queues[c]:
                    item = int(queues[c].pop(0))
                    if item not in order:
                        order.append(item)
                        owner.append(answers[c].channel)
                        used[c] += 1
                        break
                if len(order) >= limit:
                    break
        assert m.items.tolist() == order and m.channel == owner
        for c, a in enumerate(answers):
            for item, score in zip(a.items.tolist(), a.scores.tolist(), strict=True):
                if item in order:
                    assert m.channel_scores[order.index(item), c] == np.float32(score)
