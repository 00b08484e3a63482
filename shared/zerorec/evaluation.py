"""Offline evaluation: the temporal-user-20 protocol of EVALUATION.md and its metrics.

Pure functions over item indices. ``recs`` is an int array [n_users, K] of ranked item indices
(-1 pads a short list); ``truth`` is one array of held-out item indices per row of ``recs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from zerorec.data.interactions import InteractionData
from zerorec.data.split import temporal_user_split

KS = (10, 20)


@dataclass
class ProtocolSplit:
    """Train data indexed over the whole catalogue, and the held-out items of evaluated users."""

    train: InteractionData
    train_frame: pd.DataFrame
    test_frame: pd.DataFrame
    users: np.ndarray  # evaluated user indices into train.user_ids
    truth: list[np.ndarray]  # held-out item indices, one array per evaluated user


def protocol_split(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None = None,
    test_fraction: float = 0.2,
    min_interactions: int = 5,
) -> ProtocolSplit:
    """Cut temporal-user-20 and index train over the catalogue (all interacted items + metadata)."""
    train_frame, test_frame = temporal_user_split(interactions, test_fraction, min_interactions)
    names = set(interactions["item_id"].unique().tolist())
    if items is not None:
        names |= set(items["item_id"].tolist())
    vocabulary = sorted(names)
    train = InteractionData.from_frame(train_frame, items, item_vocabulary=vocabulary)
    grouped = test_frame.groupby("user_id")["item_id"].agg(list)
    users, truth = [], []
    for user_id, item_list in grouped.items():
        if user_id not in train.user_index:
            continue
        users.append(train.user_index[user_id])
        truth.append(np.array([train.item_index[i] for i in item_list], dtype=np.int64))
    return ProtocolSplit(train, train_frame, test_frame, np.array(users, dtype=np.int64), truth)


def ranking_metrics(
    recs: np.ndarray, truth: Sequence[np.ndarray], ks: Sequence[int] = KS
) -> dict[str, float]:
    """Recall@K, NDCG@K (binary gains, IDCG over min(K, |truth|)) and HR@K, averaged over rows."""
    out: dict[str, float] = {}
    n = len(truth)
    if n == 0:
        return {f"{m}@{k}": 0.0 for k in ks for m in ("ndcg", "recall", "hr")}
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    for k in ks:
        recall = ndcg = hr = 0.0
        for row, relevant in zip(recs, truth, strict=True):
            top = row[:k]
            hits = np.isin(top, relevant) & (top >= 0)
            n_rel = len(relevant)
            if n_rel == 0:
                continue
            n_hits = int(hits.sum())
            recall += n_hits / n_rel
            hr += float(n_hits > 0)
            idcg = discounts[: min(k, n_rel)].sum()
            ndcg += float(discounts[: len(top)][hits].sum() / idcg)
        out[f"ndcg@{k}"] = ndcg / n
        out[f"recall@{k}"] = recall / n
        out[f"hr@{k}"] = hr / n
    return out


def coverage(recs: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue recommended to at least one user in the top-k."""
    top = recs[:, :k]
    return float(len(np.unique(top[top >= 0])) / max(n_items, 1))


def intra_list_diversity(recs: np.ndarray, item_features: sp.csr_matrix | np.ndarray, k: int) -> float:
    """1 - mean pairwise cosine similarity of the items' feature vectors (genres or embeddings).

    Items without features count as dissimilar to everything (similarity 0).
    """
    feats = sp.csr_matrix(item_features, dtype=np.float64)
    norms = np.sqrt(np.asarray(feats.multiply(feats).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    feats = sp.diags(1.0 / norms) @ feats
    values = []
    for row in recs:
        top = row[:k]
        top = top[top >= 0]
        m = len(top)
        if m < 2:
            continue
        block = feats[top]
        sim = (block @ block.T).toarray()
        mean_pair = (sim.sum() - np.trace(sim)) / (m * (m - 1))
        values.append(1.0 - mean_pair)
    return float(np.mean(values)) if values else 0.0


def novelty(recs: np.ndarray, item_popularity: np.ndarray, n_users: int, k: int) -> float:
    """Mean -log2(share of train users who interacted with the item) over recommended items.

    Items nobody interacted with count as seen by one user (the share is floored at 1/n_users).
    """
    share = np.maximum(item_popularity, 1.0) / max(n_users, 1)
    top = recs[:, :k]
    valid = top[top >= 0]
    return float(np.mean(-np.log2(share[valid]))) if len(valid) else 0.0


def genre_matrix(data: InteractionData) -> sp.csr_matrix:
    """Items x genres multi-hot matrix (an all-zero row for items without categories)."""
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, cats in enumerate(data.item_categories):
        for c in cats:
            rows.append(i)
            cols.append(vocab.setdefault(c, len(vocab)))
    return sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(data.n_items, max(len(vocab), 1)), dtype=np.float64
    )


def candidate_recall(candidates: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> float:
    """Mean share of held-out items present in each user's candidate set (recall@|candidates|)."""
    if not truth:
        return 0.0
    return float(
        np.mean([np.isin(t, c).sum() / len(t) for c, t in zip(candidates, truth, strict=True) if len(t)])
    )


def full_report(
    recs: np.ndarray,
    truth: Sequence[np.ndarray],
    train: InteractionData,
    item_features: sp.csr_matrix | np.ndarray | None = None,
    ks: Sequence[int] = KS,
) -> dict[str, float]:
    """Accuracy at each K plus coverage@K, intra-list diversity@K and novelty@K."""
    report = ranking_metrics(recs, truth, ks)
    feats = genre_matrix(train) if item_features is None else item_features
    pop = train.item_popularity()
    for k in ks:
        report[f"coverage@{k}"] = coverage(recs, train.n_items, k)
        report[f"diversity@{k}"] = intra_list_diversity(recs, feats, k)
        report[f"novelty@{k}"] = novelty(recs, pop, train.n_users, k)
    return report


def top_k_excluding(scores: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first, never an excluded index (-1 pads)."""
    s = np.array(scores, dtype=np.float64, copy=True)
    s[exclude] = -np.inf
    k_eff = min(k, len(s))
    part = np.argpartition(-s, k_eff - 1)[:k_eff]
    part = part[np.lexsort((part, -s[part]))]
    part = part[np.isfinite(s[part])]
    out = np.full(k, -1, dtype=np.int64)
    out[: len(part)] = part
    return out
