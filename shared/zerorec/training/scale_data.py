"""Large synthetic interaction logs for scale runs, generated in vectorised numpy (seconds, not hours).

`zerorec.data.synthetic.generate` draws one interaction at a time (realistic sessions, but hours at
millions of interactions); this keeps its shape where it matters for training cost and memory:
power-law item popularity, users in taste clusters over categories, lognormal history lengths,
items arriving over time and timestamps after an item's creation.
Run: `python -m zerorec.training.scale_data --users 60000 --items 30000 --interactions 1400000 --out DIR`
(writes DIR/interactions.csv or .parquet and DIR/items.csv: the folder layout `zerorec.data.load_dataset`
and the Spark engine read).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from zerorec.data.synthetic import CATEGORIES


def generate_scale(
    n_users: int,
    n_items: int,
    n_interactions: int,
    n_clusters: int = 16,
    seed: int = 0,
    start: int = 1_500_000_000,
    span_days: int = 365,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items) with about `n_interactions` distinct user-item pairs."""
    rng = np.random.default_rng(seed)
    span = span_days * 86_400
    n_cat = len(CATEGORIES)
    popularity = (rng.permutation(n_items) + 1.0) ** -0.9
    primary = rng.integers(0, n_cat, n_items)
    created = np.where(rng.random(n_items) < 0.6, 0, rng.integers(0, span, n_items)) + start
    prefs = np.full((n_clusters, n_cat), 0.15)
    for c in range(n_clusters):
        prefs[c, rng.choice(n_cat, size=3, replace=False)] = 1.0
    sizes = rng.lognormal(0.0, 0.8, n_users)
    sizes = np.maximum(3, np.round(sizes * n_interactions / sizes.sum())).astype(np.int64)
    cluster = rng.integers(0, n_clusters, n_users)
    users_out, items_out = [], []
    for c in range(n_clusters):
        members = np.flatnonzero(cluster == c)
        if not len(members):
            continue
        weight = popularity * np.exp(3.0 * (prefs[c, primary] - 1.0))
        cdf = np.cumsum(weight / weight.sum())
        draws = np.repeat(members, np.ceil(sizes[members] * 1.15).astype(np.int64))
        picked = np.minimum(np.searchsorted(cdf, rng.random(len(draws))), n_items - 1)
        users_out.append(draws)
        items_out.append(picked)
    users = np.concatenate(users_out)
    items = np.concatenate(items_out)
    pairs = np.unique(users.astype(np.int64) * n_items + items)  # distinct pairs
    users, items = pairs // n_items, pairs % n_items
    begin = rng.integers(0, int(span * 0.7), n_users) + start
    length = rng.integers(int(span * 0.05), int(span * 0.3), n_users)
    t = begin[users] + (rng.random(len(users)) * length[users]).astype(np.int64)
    t = np.maximum(t, created[items] + rng.integers(0, 86_400, len(items)))
    interactions = pd.DataFrame(
        {
            "user_id": np.char.add("u", users.astype(str)),
            "item_id": np.char.add("i", items.astype(str)),
            "timestamp": t.astype(np.int64),
        }
    )
    meta = pd.DataFrame(
        {
            "item_id": np.char.add("i", np.arange(n_items).astype(str)),
            "title": np.char.add("Item ", np.arange(n_items).astype(str)),
            "categories": np.array(CATEGORIES, dtype=object)[primary],
            "created_at": created,
        }
    )
    return interactions, meta


def write_dataset(interactions: pd.DataFrame, items: pd.DataFrame, out: Path, fmt: str = "csv") -> Path:
    """DIR/interactions.<fmt> and DIR/items.csv; returns the interactions file."""
    out.mkdir(parents=True, exist_ok=True)
    items.to_csv(out / "items.csv", index=False)
    path = out / f"interactions.{fmt}"
    if fmt == "parquet":
        interactions.to_parquet(path, index=False)
    else:
        interactions.to_csv(path, index=False)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--interactions", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    frame, items = generate_scale(args.users, args.items, args.interactions, seed=args.seed)
    path = write_dataset(frame, items, args.out, args.format)
    print(
        f"wrote {path}: {len(frame):,} interactions, {frame['user_id'].nunique():,} users, "
        f"{frame['item_id'].nunique():,} items"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
