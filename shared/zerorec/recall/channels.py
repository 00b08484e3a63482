"""The recall channels: EASE, ALS, item-CF, hot, vector (faiss) and fresh.

Each is backed by the library the field uses (implicit for ALS and cosine item-KNN, faiss for the
vector index, numpy/scipy for EASE's closed form) and honours ``RecallChannel``: a request reads
its answer from a structure built at training time, never a catalogue-sized array.

Bundle files, under ``channels/<name>/`` (any trainer can write them: ``params.json`` holds
``{"channel", "n_items", "default_now", "params"}``, arrays are plain ``.npy``, sparse ones scipy's
``save_npz`` CSR; item indices are positions in ``meta.json``'s ``item_ids``):

- ease: keep int64 [H]; weights float16 [H, H] (dense B) or neighbours int32 and
  neighbour_weights float32 [H, k] (B's rows as lists)
- als: item_factors float16 [n, f]; yty float64 [f, f] (of the float16 factors); idf float32 [n]
- itemcf: neighbours int32 [n, k] (-1 pads); weights float32 [n, k], best first
- vector: embeddings float16 [n, f] (L2-normalised); index.faiss only when HNSW (large catalogues)
- hot: counts.npz items x day bins; category_items.npz items x categories; origin [1];
  category_names; anchors float64 [A]; anchor_items int32 [A, L]; category_top int32 [C, L]
- fresh: created float64 [n]; order int32 [n] (newest first)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from zerorec.data.interactions import InteractionData
from zerorec.recall.base import Candidates, RecallChannel, UserQuery, recency_weights, top_n
from zerorec.recall.index import (
    EMPTY_ITEMS,
    EMPTY_SCORES,
    ItemIndex,
    NeighbourLists,
    best,
    gather_scores,
)

if TYPE_CHECKING:
    import faiss
    from implicit.cpu.als import AlternatingLeastSquares

# Training libraries load where they are used: serving a bundle needs none of implicit, scipy.linalg
# or threadpoolctl (the ALS user solve is numpy), and faiss only for the ALS and vector indexes.

NEG = np.float32(-np.inf)
# exp(-x) for x >= 110 is below half the smallest float32 subnormal (~7e-46): it rounds to 0.
_KERNEL_REACH = 110.0


def _binary(data: InteractionData) -> sp.csr_matrix:
    x = (data.matrix > 0).astype(np.float32)
    return sp.csr_matrix(x)


def _gram(x: sp.csr_matrix, chunk: int = 4096) -> np.ndarray:
    """X'X as a dense float32 matrix, by BLAS GEMM over dense blocks of ``chunk`` users.

    Exact for counts below 2**24; ~3x faster than a sparse-sparse product plus ``toarray`` on
    data as dense as MovieLens (4%). Below 1% (large logs: users x head items at 0.2% at 100k users)
    the sparse product is what finishes: its cost is the users' squared lengths, not users x items^2.
    """
    if x.nnz < 0.01 * x.shape[0] * x.shape[1]:
        return np.asarray((x.T @ x).toarray(), dtype=np.float32)
    gram = np.zeros((x.shape[1], x.shape[1]), dtype=np.float32)
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk].toarray().astype(np.float32, copy=False)
        gram += block.T @ block
    return gram


_F16_TO_F32: np.ndarray | None = None


def _to_float32(a: np.ndarray) -> np.ndarray:
    """`a` as float32 (itself when it is); float16 through a 65,536-entry table (bit-identical to
    astype, 2-4x faster on the EASE matrix)."""
    global _F16_TO_F32
    if a.dtype == np.float32:
        return a
    if a.dtype != np.float16:
        return a.astype(np.float32)
    if _F16_TO_F32 is None:
        _F16_TO_F32 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    return _F16_TO_F32[np.ascontiguousarray(a).view(np.uint16)]


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite float32 matrix by Cholesky (LAPACK potrf/potri).

    About 3x faster than a float64 ``np.linalg.inv``; EASE keeps float32 weights anyway (the
    relative error of the result is ~1e-6). Falls back to ``np.linalg.inv`` if ``a`` is not SPD.
    """
    import scipy.linalg

    potrf, potri = scipy.linalg.lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    chol, info = potrf(a, lower=False, overwrite_a=False, clean=False)
    if info == 0:
        inv, info = potri(chol, lower=False, overwrite_c=True)
    if info != 0:
        return np.linalg.inv(a.astype(np.float64)).astype(np.float32)
    upper = np.triu(inv)
    return upper + np.triu(upper, 1).T


def _skip(query: UserQuery, exclude: np.ndarray | None) -> np.ndarray:
    """Items a channel never returns: the history and ``exclude``."""
    if exclude is None or not len(exclude):
        return query.history.astype(np.int64)
    return np.concatenate([query.history, exclude]).astype(np.int64)


def _answer(name: str, items: np.ndarray, scores: np.ndarray, n: int, skip: np.ndarray) -> Candidates:
    top, top_scores = best(items, scores, n, skip)
    return Candidates(top, top_scores, name)


def head_items(counts: np.ndarray, min_count: int, max_items: int | None) -> np.ndarray:
    """Items with at least ``min_count`` interactions, the ``max_items`` most popular of them when
    there are more (ties by lower index), sorted by index."""
    keep = np.flatnonzero(counts >= min_count).astype(np.int64)
    if max_items is not None and len(keep) > max_items:
        order = np.lexsort((keep, -counts[keep]))[:max_items]
        keep = np.sort(keep[order])
    return keep


class EASEChannel(RecallChannel):
    """EASE (Steck 2019): B = I - P / diag(P), P = (X'X + lambda I)^-1, on the head of the catalogue.

    The closed form is fitted on the items with at least ``min_count`` interactions, capped at the
    ``max_items`` most popular (the inversion is cubic and B quadratic in them); other items get
    -inf. With ``topk`` > 0 each row of B keeps its ``topk`` largest weights as neighbour lists
    (what serving holds: head x topk, not head x head); ``topk`` = 0 keeps B dense. Scores = sum of
    the rows of B for the user's history (over the kept entries).
    """

    name: ClassVar[str] = "ease"

    def __init__(
        self, l2: float = 200.0, min_count: int = 3, max_items: int | None = 5_000, topk: int = 0
    ) -> None:
        self.l2 = l2
        self.min_count = min_count
        self.max_items = max_items
        self.topk = topk
        self.keep = np.zeros(0, dtype=np.int64)
        self.weights = np.zeros((0, 0), dtype=np.float32)  # dense B (topk == 0)
        self.lists: NeighbourLists | None = None  # B's rows as neighbour lists (topk > 0)
        self._pos = np.zeros(0, dtype=np.int32)

    def fit(self, data: InteractionData) -> Self:
        x = _binary(data)
        counts = np.asarray(x.sum(axis=0)).ravel()
        self.keep = head_items(counts, self.min_count, self.max_items)
        from zerorec.resources import ease_fit_bytes, require_memory

        require_memory("EASE fit", ease_fit_bytes(len(self.keep)), f"{len(self.keep):,} items, dense")
        xk = sp.csr_matrix(x[:, self.keep])
        gram = _gram(xk)
        gram[np.diag_indices_from(gram)] += self.l2
        p = _spd_inverse(gram)
        del gram
        b = -p / np.diag(p)
        del p
        b[np.diag_indices_from(b)] = 0.0
        if self.topk > 0:
            # float16 as published for the dense form; lists keep the float32 weights
            self.lists = NeighbourLists.from_dense_rows(b, self.keep, self.topk)
            self.weights = np.zeros((0, 0), dtype=np.float32)
        else:
            self.weights = b.astype(np.float32, copy=False)
        self.n_items = data.n_items
        self.default_now = data.max_time()
        self._index()
        return self

    def _index(self) -> None:
        self._pos = np.full(self.n_items, -1, dtype=np.int32)
        self._pos[self.keep] = np.arange(len(self.keep), dtype=np.int32)

    def _rows(self, query: UserQuery) -> np.ndarray:
        rows = self._pos[query.history]
        return rows[rows >= 0]

    def _head_scores(self, query: UserQuery) -> np.ndarray:
        """Dense form: the history's summed rows of B over the head (bounded by ``max_items``)."""
        if "ease" not in query.memo:
            rows = self._rows(query)
            # float16 until `widen` ran: widening only the history's rows gives the same sums
            query.memo["ease"] = (
                _to_float32(self.weights[rows]).sum(axis=0)
                if len(rows)
                else np.zeros(len(self.keep), dtype=np.float32)
            )
        return query.memo["ease"]

    def _sparse(self, query: UserQuery) -> tuple[np.ndarray, np.ndarray]:
        """Lists form: (items, scores) of every item some history row reaches."""
        if "ease" not in query.memo:
            assert self.lists is not None
            query.memo["ease"] = self.lists.gather(self._rows(query))
        return query.memo["ease"]

    def score(self, query: UserQuery) -> np.ndarray:
        out = np.full(self.n_items, NEG, dtype=np.float32)
        if self.lists is not None:
            out[self.keep] = 0.0
            items, scores = self._sparse(query)
            out[items] = scores
        else:
            out[self.keep] = self._head_scores(query)
        return out

    def recall(self, query: UserQuery, n: int, exclude: np.ndarray | None = None) -> Candidates:
        if self.lists is not None:
            items, scores = self._sparse(query)
            if len(items) < n:  # the lists run dry: the rest of the head scores 0
                rest = self.keep[~np.isin(self.keep, items)][: n + len(query.history)]
                items = np.concatenate([items, rest])
                scores = np.concatenate([scores, np.zeros(len(rest), np.float32)])
            return _answer(self.name, items, scores, n, _skip(query, exclude))
        return _answer(self.name, self.keep, self._head_scores(query), n, _skip(query, exclude))

    def score_items(self, query: UserQuery, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        pos = self._pos[items]
        out = np.full(len(items), NEG, dtype=np.float32)
        head = pos >= 0
        if self.lists is not None:
            found, scores = self._sparse(query)
            out[head] = gather_scores(found, scores, items[head], 0.0)
        else:
            out[head] = self._head_scores(query)[pos[head]]
        return out

    def widen(self) -> None:
        """Dense weights to float32 once (twice the memory, no conversion per query; scores
        identical). A loaded channel keeps the published float16 until then, so a serving cold
        start need not wait for fresh pages: the function widens in the background (numpy
        releases the GIL) and answers from the float16 rows meanwhile."""
        self.weights = _to_float32(self.weights)

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2, "min_count": self.min_count, "max_items": self.max_items, "topk": self.topk}

    def arrays(self) -> dict[str, Any]:
        """``keep`` int64 [H] head item indices; dense form: ``weights`` float16 [H, H] (B);
        lists form: ``neighbours`` int32 [H, topk] (item indices, -1 pads) and ``neighbour_weights``
        float32 [H, topk], row r for item keep[r]."""
        if self.lists is not None:
            return {
                "keep": self.keep,
                "neighbours": self.lists.neighbours,
                "neighbour_weights": self.lists.weights,
            }
        return {"keep": self.keep, "weights": self.weights.astype(np.float16)}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        ch.keep = arrays["keep"].astype(np.int64)
        if "neighbours" in arrays:
            ch.lists = NeighbourLists(arrays["neighbours"], arrays["neighbour_weights"])
        else:
            ch.weights = arrays["weights"]  # float16 as published, until `widen`
        return ch

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> Self:
        ch = super().from_files(files)
        ch._index()
        return ch


# implicit's bm25_weight(X, K1=100, B=0.8), as ALS is trained on it
BM25_K1 = 100.0
BM25_B = 0.8


class ALSChannel(RecallChannel):
    """Implicit ALS (implicit.cpu.als) on bm25-weighted interactions; score = user . item factors.

    Serving holds the item factors (float16), Y'Y and the bm25 statistics, never user factors: the
    user's vector is solved from the history at request time (the closed form ALS's user step
    solves: (Y'Y + Y'(C-I)Y + reg I) x = Y'C p, with the history's bm25 weights as confidence),
    and the top items come from a faiss inner-product index (`ItemIndex`).
    """

    name: ClassVar[str] = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        iterations: int = 15,
        alpha: float = 1.0,
        bm25: bool = True,
        seed: int = 0,
        max_history: int = 1000,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.alpha = alpha
        self.bm25 = bm25
        self.seed = seed
        self.max_history = max_history  # the newest items the user solve reads (bounded cost)
        self._model: AlternatingLeastSquares | None = None
        self.item_factors16 = np.zeros((0, factors), dtype=np.float16)
        self.yty = np.zeros((factors, factors), dtype=np.float64)
        self.idf = np.zeros(0, dtype=np.float32)
        self.mean_length = 1.0
        self._index: ItemIndex | None = None

    def _new_model(self) -> AlternatingLeastSquares:
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            iterations=self.iterations,
            alpha=self.alpha,
            random_state=self.seed,
            num_threads=1,
        )

    @property
    def model(self) -> AlternatingLeastSquares:
        """implicit's model (training, and the vector job); serving never builds it."""
        if self._model is None:
            self._model = self._new_model()
        return self._model

    @model.setter
    def model(self, model: AlternatingLeastSquares) -> None:
        self._model = model

    def fit(self, data: InteractionData) -> Self:
        from threadpoolctl import threadpool_limits

        x = _binary(data)
        self.model = self._new_model()
        with threadpool_limits(1, "blas"):  # implicit's advice: a BLAS thread pool slows ALS ~3x
            self.model.fit(self._weigh(x), show_progress=False)
        self.n_items = data.n_items
        self.default_now = data.max_time()
        df = np.bincount(x.indices, minlength=data.n_items)
        self.idf = (np.log(float(x.shape[0])) - np.log1p(df)).astype(np.float32)
        self.mean_length = float(x.getnnz(axis=1).mean()) if x.shape[0] else 1.0
        self._set_factors(np.asarray(self.model.item_factors))
        return self

    def _weigh(self, x: sp.csr_matrix) -> sp.csr_matrix:
        from implicit.nearest_neighbours import bm25_weight

        return sp.csr_matrix(bm25_weight(x, K1=BM25_K1, B=BM25_B).astype(np.float32)) if self.bm25 else x

    def _set_factors(self, factors: np.ndarray) -> None:
        self.item_factors16 = np.asarray(factors, dtype=np.float16)
        y = self.item_factors16.astype(np.float64)
        self.yty = y.T @ y
        self._index = None

    def _ensure(self) -> None:
        """Factors set from implicit's model when it was fitted or assigned outside `fit`."""
        if len(self.item_factors16) == 0 and self._model is not None:
            factors = getattr(self._model, "item_factors", None)
            if factors is not None and len(factors):
                self._set_factors(np.asarray(factors))
                if not len(self.idf):
                    self.idf = np.ones(len(factors), dtype=np.float32)

    @property
    def index(self) -> ItemIndex:
        self._ensure()
        if self._index is None:
            self._index = ItemIndex(self.item_factors16)
        return self._index

    def confidence(self, history: np.ndarray) -> np.ndarray:
        """The history's row as ALS was trained on it: bm25 weights (binary data), times alpha."""
        if not self.bm25:
            return np.full(len(history), self.alpha, dtype=np.float64)
        length_norm = (1.0 - BM25_B) + BM25_B * len(history) / self.mean_length
        w = (BM25_K1 + 1.0) / (BM25_K1 * length_norm + 1.0) * self.idf[history].astype(np.float64)
        return self.alpha * w

    def user_vector(self, query: UserQuery) -> np.ndarray:
        """The user's factors solved from the history against the item factors (zeros: none)."""
        self._ensure()
        if "als" in query.memo:
            return query.memo["als"]
        hist = np.unique(query.history[-self.max_history :])
        if len(hist) == 0:
            vec = np.zeros(self.item_factors16.shape[1], dtype=np.float32)
        else:
            y = self.item_factors16[hist].astype(np.float64)
            c = self.confidence(hist)
            # implicit keeps a history item with non-positive confidence out of b, and its |c| in A
            a = self.yty + (y.T * (np.abs(c) - 1.0)) @ y + self.regularization * np.eye(y.shape[1])
            b = y.T @ np.where(c > 0, c, 0.0)
            vec = np.linalg.solve(a, b).astype(np.float32)
        query.memo["als"] = vec
        return vec

    def score(self, query: UserQuery) -> np.ndarray:
        self._ensure()
        return (self.item_factors16.astype(np.float32) @ self.user_vector(query)).astype(np.float32)

    def recall(self, query: UserQuery, n: int, exclude: np.ndarray | None = None) -> Candidates:
        if len(query.history) == 0:
            return Candidates(EMPTY_ITEMS, EMPTY_SCORES, self.name)
        skip = _skip(query, exclude)
        items, _ = self.index.search(self.user_vector(query), n + len(skip))
        # exact scores of the found items (the same product `score` computes), then their order
        return _answer(self.name, items, self.score_items(query, items), n, skip)

    def score_items(self, query: UserQuery, items: np.ndarray) -> np.ndarray:
        self._ensure()
        rows = self.item_factors16[np.asarray(items, dtype=np.int64)].astype(np.float32)
        return (rows @ self.user_vector(query)).astype(np.float32)

    def item_embeddings(self) -> np.ndarray:
        self._ensure()
        return self.item_factors16.astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "iterations": self.iterations,
            "alpha": self.alpha,
            "bm25": self.bm25,
            "seed": self.seed,
            "max_history": self.max_history,
            "mean_length": self.mean_length,
        }

    def arrays(self) -> dict[str, Any]:
        """``item_factors`` float16 [n_items, factors]; ``yty`` float64 [factors, factors] (Y'Y of
        the float16 factors); ``idf`` float32 [n_items] (bm25: log(users) - log1p(item's users))."""
        self._ensure()
        return {"item_factors": self.item_factors16, "yty": self.yty, "idf": self.idf}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        params = dict(params)
        mean_length = float(params.pop("mean_length", 1.0))
        ch = cls(**params)
        ch.mean_length = mean_length
        ch.item_factors16 = arrays["item_factors"]  # a read-only view of the bundle bytes
        ch.yty = np.asarray(arrays["yty"], dtype=np.float64)
        ch.idf = arrays["idf"]
        return ch


class ItemCFChannel(RecallChannel):
    """Item-item cosine neighbours (implicit CosineRecommender, top-K per item) over recent history.

    Score of item j = sum over the user's last ``recent`` items i of sim(i, j) * recency weight:
    a scatter-add over at most ``recent * k`` list entries per request.
    """

    name: ClassVar[str] = "itemcf"

    def __init__(self, k: int = 50, recent: int = 100, half_life_days: float = 0.0) -> None:
        self.k = k
        self.recent = recent
        self.half_life_days = half_life_days
        self.lists = NeighbourLists(np.zeros((0, 1), np.int32), np.zeros((0, 1), np.float32))

    def fit(self, data: InteractionData) -> Self:
        from implicit.nearest_neighbours import CosineRecommender

        model = CosineRecommender(K=self.k, num_threads=1)
        model.fit(_binary(data), show_progress=False)
        sim = sp.csr_matrix(model.similarity, dtype=np.float32)
        sim.setdiag(0)
        sim.eliminate_zeros()
        self.lists = NeighbourLists.from_csr(sim, self.k)
        self.n_items = data.n_items
        self.default_now = data.max_time()
        return self

    def _sparse(self, query: UserQuery) -> tuple[np.ndarray, np.ndarray]:
        if "itemcf" not in query.memo:
            items = query.history[-self.recent :]
            times = query.times[-self.recent :] if len(query.times) else np.zeros(len(items))
            w = recency_weights(times, query.reference_time(self.default_now), self.half_life_days)
            query.memo["itemcf"] = self.lists.gather(items, w)
        return query.memo["itemcf"]

    def score(self, query: UserQuery) -> np.ndarray:
        if len(query.history) == 0:
            return np.full(self.n_items, NEG, dtype=np.float32)
        out = np.zeros(self.n_items, dtype=np.float32)
        items, scores = self._sparse(query)
        out[items] = scores
        return out

    def recall(self, query: UserQuery, n: int, exclude: np.ndarray | None = None) -> Candidates:
        items, scores = self._sparse(query)
        return _answer(self.name, items, scores, n, _skip(query, exclude))

    def score_items(self, query: UserQuery, items: np.ndarray) -> np.ndarray:
        if len(query.history) == 0:
            return np.full(len(items), NEG, dtype=np.float32)
        found, scores = self._sparse(query)
        return gather_scores(found, scores, items, 0.0)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "recent": self.recent, "half_life_days": self.half_life_days}

    def arrays(self) -> dict[str, Any]:
        """``neighbours`` int32 [n_items, k] (item indices, -1 pads), ``weights`` float32 [n_items,
        k] (cosine similarity), best first."""
        return {"neighbours": self.lists.neighbours, "weights": self.lists.weights}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        ch.lists = NeighbourLists(arrays["neighbours"], arrays["weights"])
        return ch


HOT_MARGIN = 200


class HotChannel(RecallChannel):
    """Time-decayed popularity around a reference time, overall and per category.

    Interactions are counted per item in time bins; the score at time t is
    sum_b count[item, b] * exp(-|t - t_b| / tau). For live serving t is "now" (only the past
    exists, so this is plain time decay); in offline evaluation t is the user's last interaction
    time, i.e. what was popular when the user was active.

    Serving never sums the whole catalogue: training keeps the ``list_len`` hottest items at anchor
    times every ``anchor_days`` (and per category at the newest time); a request rescores the
    lists of the two anchors around its time, exactly, for those items alone.
    """

    name: ClassVar[str] = "hot"

    def __init__(
        self, tau_days: float = 20.0, bin_days: float = 1.0, anchor_days: float = 7.0, list_len: int = 1000
    ) -> None:
        self.tau_days = tau_days
        self.bin_days = bin_days
        self.anchor_days = anchor_days
        self.list_len = list_len
        self.counts = sp.csr_matrix((0, 0), dtype=np.float32)  # items x bins
        self.origin = 0.0
        self.category_names: list[str] = []
        self.category_items = sp.csr_matrix((0, 0), dtype=np.float32)  # items x categories
        self.anchors = np.zeros(0, dtype=np.float64)  # anchor times, ascending
        self.anchor_items = np.zeros((0, 0), dtype=np.int32)  # [anchors, list_len], -1 pads
        self.category_top = np.zeros((0, 0), dtype=np.int32)  # [categories, list_len] at default_now
        self._centers: tuple[tuple[float, float, int], np.ndarray] | None = None  # bin centre times
        self._last: tuple[tuple[float, int], np.ndarray, np.ndarray] | None = None  # `_hot_at`

    def fit(self, data: InteractionData) -> Self:
        coo = data.times.tocoo()
        width = self.bin_days * 86_400
        self.origin = float(coo.data.min()) if coo.nnz else 0.0
        bins = ((coo.data - self.origin) // width).astype(np.int64) if coo.nnz else np.zeros(0, np.int64)
        n_bins = int(bins.max()) + 1 if len(bins) else 1
        self.counts = sp.csr_matrix(
            (np.ones(len(bins), np.float32), (coo.col, bins)), shape=(data.n_items, n_bins)
        )
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, cats in enumerate(data.item_categories):
            for c in cats:
                rows.append(i)
                cols.append(vocab.setdefault(c, len(vocab)))
        self.category_names = list(vocab)
        self.category_items = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)), shape=(data.n_items, max(len(vocab), 1))
        )
        self.n_items = data.n_items
        self.default_now = data.max_time()
        self._build_lists()
        return self

    def _build_lists(self) -> None:
        """The anchor lists and the per-category lists (training time: whole-catalogue sums)."""
        self._last = None
        step = self.anchor_days * 86_400
        end = max(self.default_now, self.origin)
        self.anchors = np.append(np.arange(self.origin, end, step, dtype=np.float64), end)
        length = min(self.list_len, self.n_items)
        self.anchor_items = np.full((len(self.anchors), length), -1, dtype=np.int32)
        for a, t in enumerate(self.anchors):
            top = top_n(self.popularity_at(float(t)), length)
            self.anchor_items[a, : len(top)] = top
        pop = self.popularity_at(self.default_now)
        members = sp.csc_matrix(self.category_items)
        self.category_top = np.full((len(self.category_names), length), -1, dtype=np.int32)
        for c in range(len(self.category_names)):
            idx = members.indices[members.indptr[c] : members.indptr[c + 1]]
            top = idx[top_n(pop[idx], length)]
            self.category_top[c, : len(top)] = top

    def popularity_at(
        self, now: float, tau_days: float | None = None, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Kernel-weighted interaction counts per item at time ``now`` (``tau_days`` overrides tau);
        only for ``items`` when given (the same sums, in the same order, for those items alone)."""
        kernel = self._kernel(now, (self.tau_days if tau_days is None else tau_days) * 86_400)
        if items is None:
            return np.asarray(self.counts @ kernel).ravel()
        return np.asarray(self.counts[np.asarray(items, dtype=np.int64)] @ kernel).ravel()

    def _kernel(self, now: float, tau: float) -> np.ndarray:
        """exp(-|now - bin centre| / tau) per time bin, as float32.

        Beyond ~103.3 tau the value rounds to float32 zero: only the bins within _KERNEL_REACH taus
        of ``now`` are computed (the rest are exactly what exp would round to), so a short tau
        costs a fraction of the ~8k exps of the whole history."""
        n_bins = self.counts.shape[1]
        key = (self.origin, self.bin_days, n_bins)
        if self._centers is None or self._centers[0] != key:
            self._centers = (key, self.origin + (np.arange(n_bins) + 0.5) * (self.bin_days * 86_400))
        centers = self._centers[1]
        lo, hi = 0, n_bins
        if tau > 0 and np.isfinite(now):
            reach = _KERNEL_REACH * tau
            lo, hi = np.searchsorted(centers, [now - reach, now + reach]).tolist()
        kernel = np.zeros(n_bins, dtype=np.float32)
        kernel[lo:hi] = np.exp(-np.abs(now - centers[lo:hi]) / tau)
        return kernel

    def score(self, query: UserQuery) -> np.ndarray:
        return self.popularity_at(query.reference_time(self.default_now)).astype(np.float32)

    def _listed(self, now: float, depth: int | None = None) -> np.ndarray:
        """The items of the anchor lists around ``now`` (the hot items there, to rescore), the
        first ``depth`` of each list when given."""
        if not len(self.anchors):
            return EMPTY_ITEMS
        hi = int(np.clip(np.searchsorted(self.anchors, now), 0, len(self.anchors) - 1))
        lo = max(hi - 1, 0)
        items = np.unique(self.anchor_items[[lo, hi], :depth])
        return items[items >= 0].astype(np.int64)

    def _hot_at(self, now: float, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, scores) of the first ``depth`` of the anchor lists around ``now``, rescored at
        ``now``; the last answer is kept: live requests share one time (the newest training
        time)."""
        cached = self._last
        if cached is not None and cached[0] == (now, depth):
            return cached[1], cached[2]
        items = self._listed(now, depth)
        scores = self.popularity_at(now, items=items).astype(np.float32)
        self._last = ((now, depth), items, scores)
        return items, scores

    def recall(self, query: UserQuery, n: int, exclude: np.ndarray | None = None) -> Candidates:
        skip = _skip(query, exclude)
        # as deep as the answer could reach in either list (+ a margin for the order to shift
        # between the anchors), rounded up so that a few depths share the cached answer
        depth = -(-(n + len(skip) + HOT_MARGIN) // 256) * 256
        items, scores = self._hot_at(query.reference_time(self.default_now), depth)
        return _answer(self.name, items, scores, n, skip)

    def score_items(self, query: UserQuery, items: np.ndarray) -> np.ndarray:
        now = query.reference_time(self.default_now)
        return self.popularity_at(now, items=items).astype(np.float32)

    def boosted(
        self, query: UserQuery, categories: dict[str, float], n: int, exclude: np.ndarray | None = None
    ) -> Candidates:
        """Cold start with category affinities: log1p(hot) * (1 + the item's summed affinity to
        the given categories), over the hot list and the lists of those categories."""
        now = query.reference_time(self.default_now)
        col = {c: k for k, c in enumerate(self.category_names)}
        known = [(col[c], float(w)) for c, w in categories.items() if c in col]
        lists = [self._listed(now)] + [self.category_top[k] for k, _ in known]
        items = np.unique(np.concatenate(lists))
        items = items[items >= 0].astype(np.int64)
        weights = np.zeros(max(len(self.category_names), 1), dtype=np.float64)
        for k, w in known:
            weights[k] += w
        boost = np.asarray(self.category_items[items] @ weights).ravel()
        pop = self.popularity_at(now, items=items)
        scores = (np.log1p(np.maximum(pop, 0)) * (1.0 + boost)).astype(np.float32)
        return _answer(self.name, items, scores, n, _skip(query, exclude))

    def boosted_scores(self, query: UserQuery, categories: dict[str, float]) -> np.ndarray:
        """The whole-catalogue reference of `boosted` (tests)."""
        weights = np.zeros(max(len(self.category_names), 1), dtype=np.float64)
        for c, w in categories.items():
            if c in self.category_names:
                weights[self.category_names.index(c)] += float(w)
        boost = np.asarray(self.category_items @ weights).ravel()
        return (np.log1p(np.maximum(self.score(query), 0)) * (1.0 + boost)).astype(np.float32)

    def top_category(self, category: str, n: int) -> Candidates:
        """The category's hottest items at the newest training time (empty: unknown category)."""
        if category not in self.category_names:
            return Candidates(EMPTY_ITEMS, EMPTY_SCORES, self.name)
        items = self.category_top[self.category_names.index(category)]
        items = items[items >= 0].astype(np.int64)
        pop = self.popularity_at(self.default_now, items=items).astype(np.float32)
        return _answer(self.name, items, pop, n, EMPTY_ITEMS)

    def category_scores(self, category: str, now: float | None = None) -> np.ndarray:
        """Hot scores restricted to one category (-inf elsewhere); unknown category -> all -inf."""
        out = np.full(self.n_items, NEG, dtype=np.float32)
        if category not in self.category_names:
            return out
        col = self.category_names.index(category)
        members = self.category_items[:, col].nonzero()[0]
        pop = self.popularity_at(self.default_now if now is None else now)
        out[members] = pop[members]
        return out

    def params(self) -> dict[str, Any]:
        return {
            "tau_days": self.tau_days,
            "bin_days": self.bin_days,
            "anchor_days": self.anchor_days,
            "list_len": self.list_len,
        }

    def arrays(self) -> dict[str, Any]:
        """``counts`` items x time bins (CSR npz: scipy's save_npz format, float32 counts);
        ``category_items`` items x categories (CSR npz); ``origin`` [1] start of bin 0 (s);
        ``category_names`` str [C]; ``anchors`` float64 [A] anchor times; ``anchor_items`` int32
        [A, L] the hottest items at each anchor; ``category_top`` int32 [C, L] per category at the
        newest time (-1 pads)."""
        return {
            "counts": self.counts,
            "category_items": self.category_items,
            "origin": np.array([self.origin]),
            "category_names": np.array(self.category_names, dtype=np.str_),
            "anchors": self.anchors,
            "anchor_items": self.anchor_items,
            "category_top": self.category_top,
        }

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        ch.counts = arrays["counts"].astype(np.float32)
        ch.category_items = arrays["category_items"].astype(np.float32)
        ch.origin = float(arrays["origin"][0])
        ch.category_names = [str(c) for c in arrays["category_names"].tolist()]
        ch.anchors = np.asarray(arrays["anchors"], dtype=np.float64)
        ch.anchor_items = arrays["anchor_items"]
        ch.category_top = arrays["category_top"]
        return ch


class VectorChannel(RecallChannel):
    """Inner-product search over L2-normalised item embeddings (ALS item factors by default).

    The query vector is the recency-weighted mean of the embeddings of the user's last ``recent``
    items; ``recall`` searches the faiss index (`ItemIndex`: exact below its threshold, HNSW above),
    ``score`` is the same inner product over every item (the reference).
    """

    name: ClassVar[str] = "vector"

    def __init__(self, recent: int = 20, half_life_days: float = 30.0, factors: int = 64) -> None:
        self.recent = recent
        self.half_life_days = half_life_days
        self.factors = factors
        self.embeddings16 = np.zeros((0, factors), dtype=np.float16)
        self._index: ItemIndex | None = None

    def fit(self, data: InteractionData, embeddings: np.ndarray | None = None) -> Self:
        if embeddings is None:
            embeddings = ALSChannel(factors=self.factors).fit(data).item_embeddings()
        emb = np.asarray(embeddings, dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        self.embeddings16 = (emb / np.where(norms > 0, norms, 1.0)).astype(np.float16)
        self._index = None
        self.n_items = data.n_items
        self.default_now = data.max_time()
        return self

    @property
    def embeddings(self) -> np.ndarray:
        """float32 embeddings (a copy; serving reads rows of the float16 store)."""
        return self.embeddings16.astype(np.float32)

    @property
    def item_index(self) -> ItemIndex:
        if self._index is None:
            self._index = ItemIndex(self.embeddings16)
        return self._index

    @property
    def index(self) -> faiss.Index:
        """The faiss index (searched by the vector job's `nearest`)."""
        return self.item_index.index

    def query_vector(self, query: UserQuery) -> np.ndarray | None:
        if len(query.history) == 0:
            return None
        if "vector" in query.memo:
            return query.memo["vector"]
        items = query.history[-self.recent :]
        times = query.times[-self.recent :] if len(query.times) else np.zeros(len(items))
        w = recency_weights(times, query.reference_time(self.default_now), self.half_life_days)
        rows = self.embeddings16[items].astype(np.float32)
        vec = (w[:, None] * rows).sum(axis=0, keepdims=True).astype(np.float32)
        norm = float(np.linalg.norm(vec))
        vec = vec / norm if norm > 0 else vec
        query.memo["vector"] = vec
        return vec

    def score(self, query: UserQuery) -> np.ndarray:
        vec = self.query_vector(query)
        if vec is None:
            return np.full(self.n_items, NEG, dtype=np.float32)
        return (self.embeddings16.astype(np.float32) @ vec[0]).astype(np.float32)

    def recall(self, query: UserQuery, n: int, exclude: np.ndarray | None = None) -> Candidates:
        vec = self.query_vector(query)
        if vec is None:
            return Candidates(EMPTY_ITEMS, EMPTY_SCORES, self.name)
        skip = _skip(query, exclude)
        items, _ = self.item_index.search(vec, n + len(skip))
        return _answer(self.name, items, self.score_items(query, items), n, skip)

    def score_items(self, query: UserQuery, items: np.ndarray) -> np.ndarray:
        vec = self.query_vector(query)
        if vec is None:
            return np.full(len(items), NEG, dtype=np.float32)
        return (self.item_index.rows(items) @ vec[0]).astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {"recent": self.recent, "half_life_days": self.half_life_days, "factors": self.factors}

    def arrays(self) -> dict[str, Any]:
        """``embeddings`` float16 [n_items, factors], L2-normalised rows; a serialised faiss
        ``index`` only when it is approximate (HNSW: built once offline; an exact index is
        rebuilt from the embeddings at load)."""
        out: dict[str, Any] = {"embeddings": self.embeddings16}
        if not self.item_index.exact:
            import faiss

            out["index"] = faiss.serialize_index(self.item_index.index).tobytes()
        return out

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        ch.embeddings16 = arrays["embeddings"]
        if "index" in arrays:
            import faiss

            index = faiss.deserialize_index(np.frombuffer(arrays["index"], dtype=np.uint8))
            ch._index = ItemIndex(ch.embeddings16, index)
        return ch


class FreshChannel(RecallChannel):
    """Newest items first: score = exp(-age / tau) for items that exist at the reference time.

    ``order`` (items by creation time, newest first) is built at training time: a request takes
    the items just before its reference time, by binary search."""

    name: ClassVar[str] = "fresh"

    def __init__(self, tau_days: float = 30.0) -> None:
        self.tau_days = tau_days
        self.created = np.zeros(0, dtype=np.float64)
        self.order = np.zeros(0, dtype=np.int32)
        self._neg_sorted = np.zeros(0, dtype=np.float64)  # -created[order], ascending

    def fit(self, data: InteractionData) -> Self:
        assert data.item_created is not None
        self.created = data.item_created.astype(np.float64)
        self.order = np.lexsort((np.arange(len(self.created)), -self.created)).astype(np.int32)
        self._neg_sorted = -self.created[self.order]
        self.n_items = data.n_items
        self.default_now = max(data.max_time(), float(self.created.max()) if len(self.created) else 0.0)
        return self

    def _scores(self, now: float, created: np.ndarray) -> np.ndarray:
        age = (now - created) / 86_400
        out = np.exp(-np.maximum(age, 0.0) / self.tau_days).astype(np.float32)
        out[age < 0] = NEG
        return out

    def score(self, query: UserQuery) -> np.ndarray:
        return self._scores(query.reference_time(self.default_now), self.created)

    def recall(self, query: UserQuery, n: int, exclude: np.ndarray | None = None) -> Candidates:
        now = query.reference_time(self.default_now)
        skip = _skip(query, exclude)
        start = int(np.searchsorted(self._neg_sorted, -now, side="left"))  # first created <= now
        items = self.order[start : start + n + len(skip)].astype(np.int64)
        return _answer(self.name, items, self._scores(now, self.created[items]), n, skip)

    def score_items(self, query: UserQuery, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        return self._scores(query.reference_time(self.default_now), self.created[items])

    def params(self) -> dict[str, Any]:
        return {"tau_days": self.tau_days}

    def arrays(self) -> dict[str, Any]:
        """``created`` float64 [n_items] (s); ``order`` int32 [n_items]: items newest first."""
        return {"created": self.created, "order": self.order}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        ch.created = np.asarray(arrays["created"], dtype=np.float64)
        ch.order = arrays["order"]
        ch._neg_sorted = -ch.created[ch.order]
        return ch


CHANNELS: dict[str, type[RecallChannel]] = {
    c.name: c for c in (EASEChannel, ALSChannel, ItemCFChannel, HotChannel, VectorChannel, FreshChannel)
}
