"""Ranker features for (user, candidate) pairs: sparse ids and dense channel/popularity/recency stats.

Pure functions: inputs are the channels' answers for one user query (their top lists and their
scores of the candidates), the merged candidates and the item-side ``ItemFeatures``; outputs
are DeepFM's ``sparse`` int64 [M, F] and ``dense``
float32 [M, D]. Index 0 of every sparse field means unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from zerorec.data.interactions import InteractionData
from zerorec.recall.base import Candidates, UserQuery
from zerorec.recall.merge import MergedCandidates

if TYPE_CHECKING:  # the ranking side loads scipy and the channels; data-only functions never do
    import scipy.sparse as sp

    from zerorec.recall.channels import HotChannel

GENRE_SLOTS = 3
SHORT_TAU_DAYS = 7.0
LONG_TAU_DAYS = 365.0


@dataclass
class ItemFeatures:
    """Item-side arrays the features need (saved with the model as npy)."""

    log_popularity: np.ndarray  # log1p(#users) per item
    genre_slots: np.ndarray  # int64 [n_items, GENRE_SLOTS], genre index + 1, 0 = none
    genre_matrix: sp.csr_matrix | Any  # items x genres, rows L2-normalised (CSRArrays: data-only)
    created: np.ndarray  # first-seen / created_at seconds
    n_genres: int

    @classmethod
    def from_data(cls, data: InteractionData) -> ItemFeatures:
        import scipy.sparse as sp

        vocab: dict[str, int] = {}
        slots = np.zeros((data.n_items, GENRE_SLOTS), dtype=np.int64)
        rows, cols = [], []
        for i, cats in enumerate(data.item_categories):
            for k, c in enumerate(cats):
                g = vocab.setdefault(c, len(vocab))
                rows.append(i)
                cols.append(g)
                if k < GENRE_SLOTS:
                    slots[i, k] = g + 1
        gm = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)), shape=(data.n_items, max(len(vocab), 1))
        )
        norms = np.sqrt(np.asarray(gm.multiply(gm).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        gm = sp.csr_matrix(sp.diags(1.0 / norms) @ gm, dtype=np.float32)
        assert data.item_created is not None
        return cls(
            np.log1p(data.item_popularity()).astype(np.float32),
            slots,
            gm,
            data.item_created.astype(np.float64),
            len(vocab),
        )

    def arrays(self) -> dict[str, np.ndarray | sp.csr_matrix]:
        return {
            "log_popularity": self.log_popularity,
            "genre_slots": self.genre_slots,
            "genre_matrix": self.genre_matrix,
            "created": self.created,
            "n_genres": np.array([self.n_genres]),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> ItemFeatures:
        """`genre_matrix` a scipy matrix, or kept as it is when it is not one (the scipy-free
        CSRArrays of a data-only function, which never builds ranker features)."""
        gm = arrays["genre_matrix"]
        if gm.__class__.__module__.startswith("scipy."):
            import scipy.sparse as sp

            gm = sp.csr_matrix(gm, dtype=np.float32)
        return cls(
            np.asarray(arrays["log_popularity"], np.float32),
            np.asarray(arrays["genre_slots"], np.int64),
            gm,
            np.asarray(arrays["created"], np.float64),
            int(np.asarray(arrays["n_genres"])[0]),
        )


def dense_names(channels: Sequence[str]) -> list[str]:
    """Column names of the dense matrix, in order."""
    names = []
    for c in channels:
        names += [f"{c}_score", f"{c}_logrank", f"{c}_found"]
    return [
        *names,
        "hot_short",
        "hot_long",
        "log_popularity",
        "log_age_days",
        "user_log_history",
        "user_log_span_days",
        "user_mean_log_pop",
        "genre_affinity",
    ]


def sparse_cardinalities(n_users: int, n_items: int, n_genres: int, n_channels: int) -> list[int]:
    """Vocabulary sizes of the sparse fields: user, item, genre slots, primary channel (+1 for 0)."""
    return [n_users + 1, n_items + 1] + [n_genres + 1] * GENRE_SLOTS + [n_channels + 1]


def channel_signals(
    lists: Mapping[str, Candidates],
    candidate_scores: Mapping[str, np.ndarray],
    items: np.ndarray,
    channel_order: Sequence[str],
) -> np.ndarray:
    """[M, C, 2]: for each channel of ``channel_order`` and each of ``items``, the channel's score
    (``candidate_scores[c]``, its scores of ``items``; NaN where it has none) and the item's rank in
    the channel's list ``lists[c]`` (its `retrieve` answer, best first: how many listed items score
    strictly higher); the list's length for an item off the list (it ranks at least that deep; on
    ml-latest-small, seeds 0-2, the full pipeline's NDCG@10 averages 0.1493 with it, 0.1489 with an
    "absent" rank, 0.1472 with the catalogue-wide ranks this replaced); NaN where the channel has
    no score or no list.

    Both come from structures of the request's size (the candidates, the channels' top lists),
    never the catalogue. Recall computes them and ships them with its candidates, so ranking never
    asks the channels again (nor loads them); training rows use this same function."""
    items = np.asarray(items, dtype=np.int64)
    out = np.full((len(items), len(channel_order), 2), np.nan)
    for k, c in enumerate(channel_order):
        scores = candidate_scores.get(c)
        if scores is None:
            continue
        scores = np.asarray(scores, dtype=np.float64)
        out[:, k, 0] = np.where(np.isfinite(scores), scores, np.nan)
        listed = lists.get(c)
        if listed is None or not len(listed) or not len(items):
            continue
        order = np.argsort(listed.items, kind="stable")
        sorted_items = listed.items[order]
        at = np.minimum(np.searchsorted(sorted_items, items), len(sorted_items) - 1)
        hit = sorted_items[at] == items
        out[:, k, 1] = float(len(listed))  # off the list: "at least as deep as the list"
        own = np.asarray(listed.scores, dtype=np.float64)[order[at[hit]]]
        # the list is best first: strictly higher = the count of listed scores above one's own
        desc = -np.asarray(listed.scores, dtype=np.float64)
        out[hit, k, 1] = np.searchsorted(desc, -own, side="left")
    return out


def build_features(
    query: UserQuery,
    merged: MergedCandidates,
    signals: np.ndarray,
    channel_order: Sequence[str],
    items: ItemFeatures,
    hot: HotChannel | None,
    now: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse [M, 3 + GENRE_SLOTS] and dense [M, len(dense_names)] features for the candidates;
    ``signals`` is `channel_signals` of them (NaN: no score / not in the channel's list; a rank
    absent reads as log1p(catalogue size), below every listed one)."""
    cand = merged.items
    m = len(cand)
    dense_cols: list[np.ndarray] = []
    found = np.isfinite(merged.channel_scores)
    col_of = {c: i for i, c in enumerate(merged.channel_names)}
    absent_rank = np.log1p(len(items.created))
    for k, c in enumerate(channel_order):
        score, rank = signals[:, k, 0], signals[:, k, 1]
        dense_cols.append(np.where(np.isnan(score), 0.0, score))
        dense_cols.append(np.where(np.isnan(rank), absent_rank, np.log1p(np.nan_to_num(rank))))
        dense_cols.append(found[:, col_of[c]].astype(np.float64) if c in col_of else np.zeros(m))
    if hot is not None:
        dense_cols.append(np.log1p(hot.popularity_at(now, SHORT_TAU_DAYS, cand)))
        dense_cols.append(np.log1p(hot.popularity_at(now, LONG_TAU_DAYS, cand)))
    else:
        dense_cols += [np.zeros(m), np.zeros(m)]
    dense_cols.append(items.log_popularity[cand])
    dense_cols.append(np.log1p(np.maximum(now - items.created[cand], 0.0) / 86_400))
    hist = query.history
    n_hist = len(hist)
    span = (float(query.times.max() - query.times.min()) / 86_400) if len(query.times) else 0.0
    dense_cols.append(np.full(m, np.log1p(n_hist)))
    dense_cols.append(np.full(m, np.log1p(span)))
    dense_cols.append(np.full(m, float(items.log_popularity[hist].mean()) if n_hist else 0.0))
    if n_hist:
        profile = np.asarray(items.genre_matrix[hist].sum(axis=0)).ravel()
        norm = np.linalg.norm(profile)
        profile = profile / norm if norm > 0 else profile
        dense_cols.append(np.asarray(items.genre_matrix[cand] @ profile).ravel())
    else:
        dense_cols.append(np.zeros(m))
    dense = np.stack(dense_cols, axis=1).astype(np.float32)
    channel_index = {c: i + 1 for i, c in enumerate(channel_order)}
    user_field = np.full(m, (query.user + 1) if query.user is not None else 0, dtype=np.int64)
    sparse = np.column_stack(
        [
            user_field,
            cand + 1,
            items.genre_slots[cand],
            np.array([channel_index.get(c, 0) for c in merged.channel], dtype=np.int64),
        ]
    ).astype(np.int64)
    return sparse, dense
