"""The generic interactions format and its indexed, matrix form.

Interactions: a DataFrame with columns ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64,
seconds) and optional ``event_type`` (str) and ``weight`` (float). Item metadata: ``item_id``,
``title``, ``categories`` (list of str), ``created_at`` (int64 seconds) and free attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from zerorec.errors import InvalidInputError

if TYPE_CHECKING:  # pandas is for training and loading files: serving never imports it
    import pandas as pd
    import scipy.sparse as sp  # built in from_frame; data-only functions never import scipy

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "categories", "created_at")


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InvalidInputError(f"{what} is missing column(s) {missing}; got columns {list(df.columns)}")


def normalize_interactions(df: pd.DataFrame, source: str = "interactions") -> pd.DataFrame:
    """Validate and canonicalise an interactions frame.

    Ids become strings, timestamps int64 seconds (numbers or ISO dates accepted), ``weight``
    defaults to 1.0 and ``event_type`` to "interaction". Duplicate (user, item) pairs keep the
    last one by timestamp (the protocol's rule). Raises InvalidInputError naming the first bad row.
    """
    import pandas as pd

    _require(df, REQUIRED_COLUMNS, source)
    out = pd.DataFrame(
        {
            "user_id": df["user_id"].astype("string"),
            "item_id": df["item_id"].astype("string"),
        }
    )
    bad_ids = out["user_id"].isna() | out["item_id"].isna()
    bad_ids |= (out["user_id"].str.strip() == "") | (out["item_id"].str.strip() == "")
    if bad_ids.any():
        row = int(np.flatnonzero(bad_ids.to_numpy())[0])
        raise InvalidInputError(f"{source}: row {row + 1} has an empty user_id or item_id")
    ts = df["timestamp"]
    ts_num = pd.to_numeric(ts, errors="coerce")
    if ts_num.isna().any() and not pd.api.types.is_numeric_dtype(ts):
        parsed = pd.to_datetime(ts.where(ts_num.isna()), errors="coerce", utc=True, format="ISO8601")
        seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        ts_num = ts_num.where(ts_num.notna(), seconds)
    if ts_num.isna().any():
        row = int(np.flatnonzero(ts_num.isna().to_numpy())[0])
        raise InvalidInputError(
            f"{source}: row {row + 1} has a malformed timestamp {df['timestamp'].iloc[row]!r}"
        )
    out["timestamp"] = ts_num.astype("float64").round().astype("int64")
    out["user_id"] = out["user_id"].str.strip().astype(str)
    out["item_id"] = out["item_id"].str.strip().astype(str)
    if "weight" in df.columns:
        w = pd.to_numeric(df["weight"], errors="coerce")
        if w.isna().any():
            row = int(np.flatnonzero(w.isna().to_numpy())[0])
            raise InvalidInputError(f"{source}: row {row + 1} has a malformed weight")
        out["weight"] = w.astype("float32")
    else:
        out["weight"] = np.float32(1.0)
    out["event_type"] = (
        df["event_type"].astype(str).to_numpy() if "event_type" in df.columns else "interaction"
    )
    out = out.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    out = out.drop_duplicates(["user_id", "item_id"], keep="last")
    return out.reset_index(drop=True)


def normalize_items(df: pd.DataFrame, source: str = "items") -> pd.DataFrame:
    """Validate item metadata; ``categories`` may be a list or a '|'-separated string."""
    import pandas as pd

    _require(df, ("item_id",), source)
    out = df.copy()
    out["item_id"] = out["item_id"].astype(str).str.strip()
    if "title" not in out.columns:
        out["title"] = out["item_id"]
    if "categories" not in out.columns:
        out["categories"] = [[] for _ in range(len(out))]
    else:
        out["categories"] = [_split_categories(v) for v in out["categories"]]
    if "created_at" not in out.columns:
        out["created_at"] = np.int64(0)
    else:
        created = pd.to_numeric(out["created_at"], errors="coerce").fillna(0)
        out["created_at"] = created.astype("int64")
    return out.drop_duplicates("item_id", keep="last").reset_index(drop=True)


def _split_categories(value: object) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if str(v)]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    text = str(value)
    if text in ("", "(no genres listed)"):
        return []
    return [part for part in text.split("|") if part]


@dataclass
class InteractionData:
    """Interactions indexed to contiguous user and item numbers, as sparse matrices.

    ``matrix`` is users x items (weights), ``times`` the same pattern holding timestamps. The item
    vocabulary is the union of interacted items and item metadata, so brand-new items (no
    interactions yet) can still be recalled by the fresh channel.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    matrix: sp.csr_matrix
    times: sp.csr_matrix
    item_categories: list[list[str]] = field(default_factory=list)
    item_created: np.ndarray | None = None
    user_index: dict[str, int] = field(default_factory=dict)
    item_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.user_index:
            self.user_index = {u: i for i, u in enumerate(self.user_ids.tolist())}
        if not self.item_index:
            self.item_index = {it: i for i, it in enumerate(self.item_ids.tolist())}
        if not self.item_categories:
            self.item_categories = [[] for _ in range(len(self.item_ids))]
        if self.item_created is None:
            self.item_created = self._first_seen()

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def _first_seen(self) -> np.ndarray:
        coo = self.times.tocoo()
        first = np.full(self.n_items, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, coo.col, coo.data.astype(np.int64))
        first[first == np.iinfo(np.int64).max] = int(coo.data.max()) if coo.nnz else 0
        return first

    @classmethod
    def from_frame(
        cls,
        interactions: pd.DataFrame,
        items: pd.DataFrame | None = None,
        item_vocabulary: Sequence[str] | None = None,
    ) -> InteractionData:
        """Index a normalised interactions frame (see normalize_interactions)."""
        import scipy.sparse as sp

        user_ids = np.array(sorted(interactions["user_id"].unique().tolist()), dtype=object)
        if item_vocabulary is not None:
            item_ids = np.array(list(item_vocabulary), dtype=object)
        else:
            names = set(interactions["item_id"].unique().tolist())
            if items is not None:
                names |= set(items["item_id"].tolist())
            item_ids = np.array(sorted(names), dtype=object)
        user_index = {u: i for i, u in enumerate(user_ids.tolist())}
        item_index = {it: i for i, it in enumerate(item_ids.tolist())}
        known = interactions["item_id"].isin(item_index)
        frame = interactions[known]
        rows = frame["user_id"].map(user_index).to_numpy(np.int64)
        cols = frame["item_id"].map(item_index).to_numpy(np.int64)
        shape = (len(user_ids), len(item_ids))
        weights = (
            frame["weight"].to_numpy(np.float32) if "weight" in frame else np.ones(len(frame), np.float32)
        )
        matrix = sp.csr_matrix((weights, (rows, cols)), shape=shape, dtype=np.float32)
        times = sp.csr_matrix(
            (frame["timestamp"].to_numpy(np.float64), (rows, cols)), shape=shape, dtype=np.float64
        )
        matrix.sum_duplicates()
        times.sum_duplicates()
        categories: list[list[str]] = [[] for _ in range(len(item_ids))]
        created = None
        if items is not None and len(items):
            meta = items[items["item_id"].isin(item_index)]
            idx = meta["item_id"].map(item_index).to_numpy(np.int64)
            for i, cats in zip(idx.tolist(), meta["categories"].tolist(), strict=True):
                categories[i] = list(cats)
        data = cls(user_ids, item_ids, matrix, times, categories, created, user_index, item_index)
        if items is not None and len(items) and "created_at" in items.columns:
            meta = items[items["item_id"].isin(item_index)]
            idx = meta["item_id"].map(item_index).to_numpy(np.int64)
            given = meta["created_at"].to_numpy(np.int64)
            assert data.item_created is not None
            data.item_created[idx] = np.where(given > 0, given, data.item_created[idx])
        return data

    def history(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """A user's items and timestamps, oldest first (ties broken by item index)."""
        start, end = self.matrix.indptr[user], self.matrix.indptr[user + 1]
        items = self.times.indices[start:end]
        ts = self.times.data[start:end]
        order = np.lexsort((items, ts))
        return items[order].astype(np.int64), ts[order]

    def item_popularity(self) -> np.ndarray:
        """Number of users who interacted with each item."""
        return np.asarray((self.matrix > 0).sum(axis=0)).ravel().astype(np.float64)

    def max_time(self) -> float:
        return float(self.times.data.max()) if self.times.nnz else 0.0
