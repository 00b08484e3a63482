"""A deterministic synthetic dataset with the structure of real interaction logs.

Power-law item popularity, users in taste clusters that prefer a few categories, timestamps over a
time span, items arriving over time (an item cannot be consumed before it exists) and a recency
effect (new items get a boost). The embedded default when no dataset is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CATEGORIES = [
    "action",
    "adventure",
    "animation",
    "comedy",
    "crime",
    "documentary",
    "drama",
    "fantasy",
    "horror",
    "romance",
    "scifi",
    "thriller",
]


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 600
    n_items: int = 1500
    n_clusters: int = 8
    mean_interactions: float = 40.0
    zipf_exponent: float = 1.0
    cluster_strength: float = 6.0
    start: int = 1_500_000_000
    span_days: int = 720
    initial_item_share: float = 0.6
    seed: int = 7


def generate(config: SyntheticConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (interactions, items) in the generic format; same config -> same output."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    span = cfg.span_days * 86_400
    n_cat = len(CATEGORIES)
    # items: popularity, categories, creation time
    ranks = rng.permutation(cfg.n_items) + 1
    popularity = ranks.astype(np.float64) ** -cfg.zipf_exponent
    primary = rng.integers(0, n_cat, cfg.n_items)
    secondary = rng.integers(0, n_cat, cfg.n_items)
    has_second = rng.random(cfg.n_items) < 0.5
    n_initial = int(cfg.n_items * cfg.initial_item_share)
    created = np.zeros(cfg.n_items, dtype=np.int64)
    created[n_initial:] = np.sort(rng.integers(0, span, cfg.n_items - n_initial))
    created = created + cfg.start
    item_cats = np.zeros((cfg.n_items, n_cat))
    item_cats[np.arange(cfg.n_items), primary] = 1.0
    item_cats[np.arange(cfg.n_items)[has_second], secondary[has_second]] = 1.0
    # clusters prefer 2-3 categories
    cluster_pref = np.full((cfg.n_clusters, n_cat), 0.2)
    for c in range(cfg.n_clusters):
        liked = rng.choice(n_cat, size=rng.integers(2, 4), replace=False)
        cluster_pref[c, liked] = 1.0
    # a few niche items per cluster: strong within-cluster taste beyond categories
    cluster_items = rng.random((cfg.n_clusters, cfg.n_items)) < 0.08

    rows_user: list[np.ndarray] = []
    rows_item: list[np.ndarray] = []
    rows_time: list[np.ndarray] = []
    user_cluster = rng.integers(0, cfg.n_clusters, cfg.n_users)
    sizes = np.clip(rng.lognormal(np.log(cfg.mean_interactions), 0.7, cfg.n_users), 5, cfg.n_items // 3)
    for user in range(cfg.n_users):
        cluster = user_cluster[user]
        affinity = item_cats @ cluster_pref[cluster] / np.maximum(item_cats.sum(1), 1)
        weight = popularity * np.exp(cfg.cluster_strength * (affinity - 1.0))
        weight = weight * np.where(cluster_items[cluster], 4.0, 1.0)
        n = int(sizes[user])
        begin = int(rng.integers(0, int(span * 0.7)))
        length = int(rng.integers(int(span * 0.05), span - begin))
        times = np.sort(rng.integers(begin, begin + length, n)) + cfg.start
        chosen: set[int] = set()
        items_out = np.empty(n, dtype=np.int64)
        for k, t in enumerate(times):
            alive = created <= t
            age_days = np.maximum(t - created, 0) / 86_400
            w = weight * alive * (1.0 + 2.0 * np.exp(-age_days / 30.0))
            if chosen:
                w[list(chosen)] = 0.0
            total = w.sum()
            if total <= 0:
                items_out = items_out[:k]
                times = times[:k]
                break
            item = int(rng.choice(cfg.n_items, p=w / total))
            chosen.add(item)
            items_out[k] = item
        rows_user.append(np.full(len(items_out), user))
        rows_item.append(items_out)
        rows_time.append(times)
    interactions = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in np.concatenate(rows_user)],
            "item_id": [f"i{i}" for i in np.concatenate(rows_item)],
            "timestamp": np.concatenate(rows_time).astype(np.int64),
            "event_type": "click",
            "weight": np.float32(1.0),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(cfg.n_items)],
            "title": [f"Item {i}" for i in range(cfg.n_items)],
            "categories": [[CATEGORIES[c] for c in np.flatnonzero(item_cats[i])] for i in range(cfg.n_items)],
            "created_at": created,
        }
    )
    return interactions.sort_values(["user_id", "timestamp", "item_id"]).reset_index(drop=True), items


@dataclass(frozen=True)
class ScaleConfig:
    """Interaction logs at benchmark scale, generated vectorised (`generate` loops per user).

    Zipf item popularity; users in ``n_clusters`` taste clusters that take ``in_cluster`` of their
    interactions from their cluster's items (by the same Zipf popularity) and the rest from the
    whole catalogue; lognormal user activity; items arrive over the span (``initial_item_share``
    exist at the start) and are never consumed before they exist."""

    n_items: int = 10_000
    n_users: int = 100_000
    n_interactions: int = 1_000_000
    n_clusters: int = 64
    zipf_exponent: float = 0.9
    in_cluster: float = 0.7
    activity_sigma: float = 1.0
    start: int = 1_600_000_000
    span_days: int = 360
    initial_item_share: float = 0.6
    seed: int = 7


def generate_scale(config: ScaleConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items) in the generic format, about ``n_interactions`` unique user-item pairs
    (duplicates drawn are dropped); deterministic for a config."""
    cfg = config or ScaleConfig()
    rng = np.random.default_rng(cfg.seed)
    n_items, n_users = cfg.n_items, cfg.n_users
    span = cfg.span_days * 86_400
    popularity = (rng.permutation(n_items) + 1.0) ** -cfg.zipf_exponent
    item_cluster = rng.integers(0, cfg.n_clusters, n_items)
    n_initial = int(n_items * cfg.initial_item_share)
    created = np.zeros(n_items, dtype=np.int64)
    created[n_initial:] = np.sort(rng.integers(0, int(span * 0.9), n_items - n_initial))
    activity = rng.lognormal(0.0, cfg.activity_sigma, n_users)
    user_cluster = rng.integers(0, cfg.n_clusters, n_users)
    draws = int(cfg.n_interactions * 1.3)  # duplicates are dropped below
    users = np.searchsorted(np.cumsum(activity / activity.sum()), rng.random(draws), side="right")
    users = np.minimum(users, n_users - 1)
    items = np.empty(draws, dtype=np.int64)
    global_cdf = np.cumsum(popularity / popularity.sum())
    local = rng.random(draws) < cfg.in_cluster
    picks = ~local
    items[picks] = np.searchsorted(global_cdf, rng.random(int(picks.sum())), side="right")
    clusters = user_cluster[users]
    for c in range(cfg.n_clusters):
        members = np.flatnonzero(item_cluster == c)
        rows = np.flatnonzero(local & (clusters == c))
        if not len(members) or not len(rows):
            items[rows] = np.searchsorted(global_cdf, rng.random(len(rows)), side="right")
            continue
        cdf = np.cumsum(popularity[members] / popularity[members].sum())
        items[rows] = members[
            np.minimum(np.searchsorted(cdf, rng.random(len(rows)), side="right"), len(members) - 1)
        ]
    items = np.minimum(items, n_items - 1)
    # an interaction falls after its item exists: uniform over [created, end of the span]
    times = created[items] + (rng.random(draws) * (span - created[items])).astype(np.int64)
    pair = users.astype(np.int64) * n_items + items
    _, first = np.unique(pair, return_index=True)
    first = np.sort(first)[: cfg.n_interactions]
    users, items, times = users[first], items[first], times[first] + cfg.start
    interactions = pd.DataFrame(
        {
            "user_id": np.char.add("u", users.astype(str)),
            "item_id": np.char.add("i", items.astype(str)),
            "timestamp": times.astype(np.int64),
            "event_type": "click",
            "weight": np.float32(1.0),
        }
    )
    second = rng.integers(0, len(CATEGORIES), n_items)
    has_second = rng.random(n_items) < 0.3
    cats = [
        [CATEGORIES[c % len(CATEGORIES)]] + ([CATEGORIES[s]] if h and s != c % len(CATEGORIES) else [])
        for c, s, h in zip(item_cluster.tolist(), second.tolist(), has_second.tolist(), strict=True)
    ]
    item_frame = pd.DataFrame(
        {
            "item_id": np.char.add("i", np.arange(n_items).astype(str)),
            "title": [f"Item {i}" for i in range(n_items)],
            "categories": cats,
            "created_at": created + cfg.start,
        }
    )
    return interactions, item_frame
