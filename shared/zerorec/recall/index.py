"""Recall structures built at training time, answered per request without a catalogue-sized array.

- ``best``: a channel's top-n of a small (items, scores) answer, history and exclusions dropped,
  ordered like ``base.top_n`` (score descending, ties by lower index).
- ``NeighbourLists``: top-k neighbours per item (item-CF cosine, sparsified EASE). A user's scores
  are a scatter-add over at most ``len(history) * k`` entries.
- ``ItemIndex``: faiss nearest-neighbour search over item vectors (ALS factors, embeddings): exact
  (``IndexFlat``) up to ``exact_below`` items, HNSW above; the item vectors are stored float16.

Bundle format (what any trainer, e.g. the Spark engine, writes): plain ``.npy`` arrays and
``params.json``, documented on each channel's ``arrays``; faiss indexes are rebuilt at load from the
float16 vectors unless the bundle carries a serialised ``index.faiss`` (HNSW: built once, offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss
    import scipy.sparse as sp

EMPTY_ITEMS = np.zeros(0, dtype=np.int64)
EMPTY_SCORES = np.zeros(0, dtype=np.float32)


def best(
    items: np.ndarray, scores: np.ndarray, n: int, skip: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The n best of ``items`` by ``scores`` (each item once), never one of ``skip``, non-finite
    scores dropped: score descending, ties by lower index (the order of ``base.top_n``)."""
    items = np.asarray(items, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    keep = np.isfinite(scores)
    if skip is not None and len(skip):
        keep &= ~np.isin(items, skip)
    items, scores = items[keep], scores[keep]
    if n <= 0 or not len(items):
        return EMPTY_ITEMS, EMPTY_SCORES
    if n < len(items):
        part = np.argpartition(-scores, n - 1)[:n]
        # argpartition splits ties at the n-th score arbitrarily: take every item tied with it
        cut = scores[part].min()
        part = np.flatnonzero(scores >= cut)
        items, scores = items[part], scores[part]
    order = np.lexsort((items, -scores))[:n]
    return items[order], scores[order]


@dataclass
class NeighbourLists:
    """Top-k neighbours of each item: ``neighbours`` int32 [n_items, k] (-1 pads a short row) and
    ``weights`` float32 [n_items, k]. The score of item j for a history h with weights w is
    sum_i w_i * weight(h_i -> j): what a sparse items x items matrix with these rows gives."""

    neighbours: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_csr(cls, matrix: sp.csr_matrix, k: int | None = None) -> NeighbourLists:
        """Rows of a sparse matrix as fixed-width lists, each row's ``k`` largest entries (all when
        ``k`` is None: the width is the longest row)."""
        import scipy.sparse as sp

        m = sp.csr_matrix(matrix)
        m.sum_duplicates()
        lengths = np.diff(m.indptr)
        width = int(lengths.max()) if len(lengths) and k is None else int(k or 0)
        width = max(min(width, int(lengths.max()) if len(lengths) else 0), 1)
        n = m.shape[0]
        neighbours = np.full((n, width), -1, dtype=np.int32)
        weights = np.zeros((n, width), dtype=np.float32)
        for row in range(n):
            start, end = m.indptr[row], m.indptr[row + 1]
            if start == end:
                continue
            cols, vals = m.indices[start:end], m.data[start:end]
            if end - start > width:
                pick = np.argpartition(-vals, width - 1)[:width]
                cols, vals = cols[pick], vals[pick]
            order = np.lexsort((cols, -vals))
            neighbours[row, : len(order)] = cols[order]
            weights[row, : len(order)] = vals[order]
        return cls(neighbours, weights)

    @classmethod
    def from_dense_rows(cls, rows: np.ndarray, columns: np.ndarray, k: int) -> NeighbourLists:
        """Lists from dense rows (``rows[r]`` over item indices ``columns``): the k largest entries
        of each row (EASE's B on the head of the catalogue)."""
        k = max(1, min(k, rows.shape[1]))
        pick = np.argpartition(-rows, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(rows, pick, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        pick = np.take_along_axis(pick, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
        return cls(columns[pick].astype(np.int32), vals.astype(np.float32))

    @property
    def n_items(self) -> int:
        return int(self.neighbours.shape[0])

    def gather(
        self, rows: np.ndarray, row_weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores): the weighted sum of the lists of ``rows`` per neighbour, every item with
        at least one entry once (sorted by index); float64 sums, float32 scores."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return EMPTY_ITEMS, EMPTY_SCORES
        cols = self.neighbours[rows]
        vals = self.weights[rows].astype(np.float64)
        if row_weights is not None:
            vals = vals * np.asarray(row_weights, dtype=np.float64)[:, None]
        present = cols >= 0
        cols, vals = cols[present], vals[present]
        items, inverse = np.unique(cols, return_inverse=True)
        return items.astype(np.int64), np.bincount(inverse, weights=vals, minlength=len(items)).astype(
            np.float32
        )

    def dense(self, rows: np.ndarray, row_weights: np.ndarray | None = None) -> np.ndarray:
        """The same sums over the whole catalogue (0 where no list reaches): the brute-force
        reference of `gather`, for tests and offline use only."""
        out = np.zeros(self.n_items, dtype=np.float32)
        items, scores = self.gather(rows, row_weights)
        out[items] = scores
        return out


def gather_scores(items: np.ndarray, scores: np.ndarray, wanted: np.ndarray, absent: float) -> np.ndarray:
    """The scores of ``wanted`` in a sorted (items, scores) answer; ``absent`` where it has none."""
    wanted = np.asarray(wanted, dtype=np.int64)
    out = np.full(len(wanted), absent, dtype=np.float32)
    if len(items) and len(wanted):
        at = np.minimum(np.searchsorted(items, wanted), len(items) - 1)
        hit = items[at] == wanted
        out[hit] = scores[at[hit]]
    return out


# Exhaustive search is exact and, below this many items, a few ms: HNSW only above it.
EXACT_BELOW = 200_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256


class ItemIndex:
    """Inner-product search over item vectors: faiss ``IndexFlatIP`` (exact) for catalogues up to
    ``exact_below`` items, ``IndexHNSWFlat`` (approximate) above. ``vectors`` are the float16 item
    vectors as stored; the index holds them widened to float32 (exactly the same values)."""

    def __init__(self, vectors: np.ndarray, index: faiss.Index | None = None, exact_below: int = EXACT_BELOW):
        self.vectors = vectors
        self.index = index if index is not None else self.build(vectors, exact_below)

    @staticmethod
    def build(vectors: np.ndarray, exact_below: int = EXACT_BELOW) -> faiss.Index:
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        d = x.shape[1] if x.ndim == 2 else 1
        if len(x) <= exact_below:
            index = faiss.IndexFlatIP(d)
        else:
            index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        if len(x):
            index.add(x)
        return index

    @property
    def exact(self) -> bool:
        import faiss

        return isinstance(self.index, faiss.IndexFlat)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores) of the k best inner products, best first (-1 rows dropped)."""
        k = min(k, self.index.ntotal)
        if k <= 0:
            return EMPTY_ITEMS, EMPTY_SCORES
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        import faiss

        if faiss.omp_get_max_threads() != 1:  # one query: OpenMP threads only spin (40 ms vs 1 ms)
            faiss.omp_set_num_threads(1)
        if not self.exact:
            params = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))
            scores, items = self.index.search(q, k, params=params)
        else:
            scores, items = self.index.search(q, k)
        keep = items[0] >= 0
        return items[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)

    def rows(self, items: np.ndarray) -> np.ndarray:
        """float32 vectors of ``items`` (from the float16 store)."""
        return np.asarray(self.vectors[np.asarray(items, dtype=np.int64)], dtype=np.float32)
