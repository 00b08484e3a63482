"""The temporal-user-20 split of EVALUATION.md."""

from __future__ import annotations

import numpy as np
import pandas as pd


def item_sort_key(item_ids: pd.Series) -> pd.Series:
    """Tie-break key for item ids: numeric order when every id is an integer, else text order."""
    as_int = pd.to_numeric(item_ids, errors="coerce")
    if as_int.notna().all():
        return as_int
    return item_ids.astype(str)


def temporal_user_split(
    interactions: pd.DataFrame,
    test_fraction: float = 0.2,
    min_interactions: int = 5,
    rounding: str = "floor",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, sorted by (timestamp, item_id), the last ``test_fraction`` (at least 1) is test.

    Users with fewer than ``min_interactions`` stay whole in train. Expects a normalised frame
    (one row per user-item pair). Item ids that are all integers tie-break numerically.
    Returns (train, test).
    """
    frame = interactions.assign(_key=item_sort_key(interactions["item_id"]))
    frame = frame.sort_values(["user_id", "timestamp", "_key"], kind="stable").drop(columns="_key")
    sizes = frame.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    position = frame.groupby("user_id", sort=False).cumcount().to_numpy()
    raw = sizes * test_fraction
    counts = np.round(raw) if rounding == "round" else np.floor(raw + 1e-9)
    n_test = np.maximum(1, counts.astype(np.int64))
    is_test = (sizes >= min_interactions) & (position >= sizes - n_test)
    return frame[~is_test].reset_index(drop=True), frame[is_test].reset_index(drop=True)
