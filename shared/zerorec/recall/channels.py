"""The recall channels: EASE, ALS, item-CF, hot, vector (faiss) and fresh.

Each is backed by the library the field uses (implicit for ALS and cosine item-KNN, faiss for the
vector index, numpy/scipy for EASE's closed form) and honours ``RecallChannel``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from zerorec.data.interactions import InteractionData
from zerorec.recall.base import RecallChannel, UserQuery, recency_weights

if TYPE_CHECKING:
    import faiss
    from implicit.cpu.als import AlternatingLeastSquares

# Training libraries load where they are used: serving a bundle needs none of implicit, scipy.linalg
# or threadpoolctl until an ALS user vector must be recomputed (a user unknown to the model), and
# faiss only in the vector channel.

NEG = np.float32(-np.inf)
# exp(-x) for x >= 110 is below half the smallest float32 subnormal (~7e-46): it rounds to 0.
_KERNEL_REACH = 110.0


def _binary(data: InteractionData) -> sp.csr_matrix:
    x = (data.matrix > 0).astype(np.float32)
    return sp.csr_matrix(x)


def _gram(x: sp.csr_matrix, chunk: int = 4096) -> np.ndarray:
    """X'X as a dense float32 matrix, by BLAS GEMM over dense blocks of ``chunk`` users.

    Exact for counts below 2**24; ~3x faster than a sparse-sparse product plus ``toarray``.
    """
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


class EASEChannel(RecallChannel):
    """EASE (Steck 2019): B = I - P / diag(P), P = (X'X + lambda I)^-1, on items with enough data.

    Scores = sum of the rows of B for the user's history. Items under ``min_count`` interactions
    are left out of the closed form (keeps the inversion small) and get -inf.
    """

    name: ClassVar[str] = "ease"

    def __init__(self, l2: float = 200.0, min_count: int = 3) -> None:
        self.l2 = l2
        self.min_count = min_count
        self.keep = np.zeros(0, dtype=np.int64)
        self.weights = np.zeros((0, 0), dtype=np.float32)
        self._pos = np.zeros(0, dtype=np.int64)

    def fit(self, data: InteractionData) -> Self:
        x = _binary(data)
        counts = np.asarray(x.sum(axis=0)).ravel()
        self.keep = np.flatnonzero(counts >= self.min_count).astype(np.int64)
        from zerorec.resources import ease_fit_bytes, require_memory

        require_memory("EASE fit", ease_fit_bytes(len(self.keep)), f"{len(self.keep):,} items, dense")
        xk = x[:, self.keep]
        gram = _gram(xk)
        gram[np.diag_indices_from(gram)] += self.l2
        p = _spd_inverse(gram)
        b = -p / np.diag(p)
        b[np.diag_indices_from(b)] = 0.0
        self.weights = b.astype(np.float32, copy=False)
        self.n_items = data.n_items
        self.default_now = data.max_time()
        self._index()
        return self

    def _index(self) -> None:
        self._pos = np.full(self.n_items, -1, dtype=np.int64)
        self._pos[self.keep] = np.arange(len(self.keep))

    def score(self, query: UserQuery) -> np.ndarray:
        out = np.full(self.n_items, NEG, dtype=np.float32)
        rows = self._pos[query.history]
        rows = rows[rows >= 0]
        if len(rows):
            # float16 until `widen` ran: widening only the history's rows gives the same sums
            out[self.keep] = _to_float32(self.weights[rows]).sum(axis=0)
        else:
            out[self.keep] = 0.0
        return out

    def widen(self) -> None:
        """Weights to float32 once (twice the memory, no conversion per query; scores identical).
        A loaded channel keeps the published float16 until then, so a serving cold start need not
        wait for ~100 MB of fresh pages: the function widens in the background (numpy releases
        the GIL) and answers from the float16 rows meanwhile."""
        self.weights = _to_float32(self.weights)

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2, "min_count": self.min_count}

    def arrays(self) -> dict[str, Any]:
        return {"keep": self.keep, "weights": self.weights.astype(np.float16)}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        ch.keep = arrays["keep"].astype(np.int64)
        ch.weights = arrays["weights"]  # float16 as published, until `widen`
        return ch

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> Self:
        ch = super().from_files(files)
        ch._index()
        return ch


class ALSChannel(RecallChannel):
    """Implicit ALS (implicit.cpu.als) on bm25-weighted interactions; score = user . item factors.

    Known users use their trained factor; unknown users (or a supplied history) are solved on the
    fly from the history with implicit's ``recalculate_user``.
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
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.iterations = iterations
        self.alpha = alpha
        self.bm25 = bm25
        self.seed = seed
        self._model: AlternatingLeastSquares | None = None
        self._loaded: tuple[np.ndarray, np.ndarray] | None = None  # (user, item) factors of a bundle

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
        """implicit's model, built on first use (a loaded bundle scores known users without it)."""
        if self._model is None:
            self._model = self._new_model()
            if self._loaded is not None:
                self._model.user_factors, self._model.item_factors = self._loaded
                self._loaded = None
        return self._model

    @model.setter
    def model(self, model: AlternatingLeastSquares) -> None:
        self._model, self._loaded = model, None

    def _factors(self) -> tuple[np.ndarray, np.ndarray]:
        """(user factors, item factors), without building implicit's model for a loaded bundle."""
        if self._loaded is not None:
            return self._loaded
        return self.model.user_factors, self.model.item_factors

    def _weigh(self, x: sp.csr_matrix) -> sp.csr_matrix:
        from implicit.nearest_neighbours import bm25_weight

        return sp.csr_matrix(bm25_weight(x, K1=100, B=0.8).astype(np.float32)) if self.bm25 else x

    def fit(self, data: InteractionData) -> Self:
        from threadpoolctl import threadpool_limits

        x = _binary(data)
        weighted = self._weigh(x)
        self.model = self._new_model()
        with threadpool_limits(1, "blas"):  # implicit's advice: a BLAS thread pool slows ALS ~3x
            self.model.fit(weighted, show_progress=False)
        self.n_items = data.n_items
        self.default_now = data.max_time()
        return self

    def user_vector(self, query: UserQuery) -> np.ndarray:
        user_factors, item_factors = self._factors()
        if query.user is not None and query.user < user_factors.shape[0]:
            return np.asarray(user_factors[query.user])
        if len(query.history) == 0:
            return np.zeros(item_factors.shape[1], dtype=np.float32)
        row = sp.csr_matrix(
            (np.ones(len(query.history), np.float32), (np.zeros(len(query.history)), query.history)),
            shape=(1, self.n_items),
        )
        return np.asarray(self.model.recalculate_user(0, row)).ravel()

    def score(self, query: UserQuery) -> np.ndarray:
        return (self._factors()[1] @ self.user_vector(query)).astype(np.float32)

    def item_embeddings(self) -> np.ndarray:
        return np.asarray(self._factors()[1], dtype=np.float32)

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "iterations": self.iterations,
            "alpha": self.alpha,
            "bm25": self.bm25,
            "seed": self.seed,
        }

    def arrays(self) -> dict[str, Any]:
        return {
            "user_factors": np.asarray(self._factors()[0], np.float32),
            "item_factors": np.asarray(self._factors()[1], np.float32),
        }

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        # Copies: loaded arrays are read-only views of the bundle, and implicit's Cython kernels
        # (recalculate_user for a history the model has not seen) take writable buffers only.
        ch._loaded = (
            np.array(arrays["user_factors"], dtype=np.float32, order="C"),
            np.array(arrays["item_factors"], dtype=np.float32, order="C"),
        )
        return ch


class ItemCFChannel(RecallChannel):
    """Item-item cosine neighbours (implicit CosineRecommender, top-K per item) over recent history.

    Score of item j = sum over the user's last ``recent`` items i of sim(i, j) * recency weight.
    """

    name: ClassVar[str] = "itemcf"

    def __init__(self, k: int = 50, recent: int = 100, half_life_days: float = 0.0) -> None:
        self.k = k
        self.recent = recent
        self.half_life_days = half_life_days
        self.similarity = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, data: InteractionData) -> Self:
        from implicit.nearest_neighbours import CosineRecommender

        model = CosineRecommender(K=self.k, num_threads=1)
        model.fit(_binary(data), show_progress=False)
        sim = sp.csr_matrix(model.similarity, dtype=np.float32)
        sim.setdiag(0)
        sim.eliminate_zeros()
        self.similarity = sim
        self.n_items = data.n_items
        self.default_now = data.max_time()
        return self

    def score(self, query: UserQuery) -> np.ndarray:
        if len(query.history) == 0:
            return np.full(self.n_items, NEG, dtype=np.float32)
        items = query.history[-self.recent :]
        times = query.times[-self.recent :] if len(query.times) else np.zeros(len(items))
        w = recency_weights(times, query.reference_time(self.default_now), self.half_life_days)
        return np.asarray(self.similarity[items].T @ w).ravel().astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "recent": self.recent, "half_life_days": self.half_life_days}

    def arrays(self) -> dict[str, Any]:
        return {"similarity": self.similarity}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        ch.similarity = arrays["similarity"].astype(np.float32)
        return ch


class HotChannel(RecallChannel):
    """Time-decayed popularity around a reference time, overall and per category.

    Interactions are counted per item in time bins; the score at time t is
    sum_b count[item, b] * exp(-|t - t_b| / tau). For live serving t is "now" (only the past
    exists, so this is plain time decay); in offline evaluation t is the user's last interaction
    time, i.e. what was popular when the user was active.
    """

    name: ClassVar[str] = "hot"

    def __init__(self, tau_days: float = 20.0, bin_days: float = 1.0) -> None:
        self.tau_days = tau_days
        self.bin_days = bin_days
        self.counts = sp.csr_matrix((0, 0), dtype=np.float32)  # bins x items
        self.origin = 0.0
        self.category_names: list[str] = []
        self.category_items = sp.csr_matrix((0, 0), dtype=np.float32)  # items x categories
        self._by_item: tuple[sp.csr_matrix, sp.csr_matrix] | None = None  # (counts, counts.T as CSR)
        self._centers: tuple[tuple[float, float, int], np.ndarray] | None = None  # bin centre times

    def fit(self, data: InteractionData) -> Self:
        coo = data.times.tocoo()
        width = self.bin_days * 86_400
        self.origin = float(coo.data.min()) if coo.nnz else 0.0
        bins = ((coo.data - self.origin) // width).astype(np.int64) if coo.nnz else np.zeros(0, np.int64)
        n_bins = int(bins.max()) + 1 if len(bins) else 1
        self.counts = sp.csr_matrix(
            (np.ones(len(bins), np.float32), (bins, coo.col)), shape=(n_bins, data.n_items)
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
        return self

    def popularity_at(
        self, now: float, tau_days: float | None = None, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Kernel-weighted interaction counts per item at time ``now`` (``tau_days`` overrides tau);
        only for ``items`` when given (the same sums, in the same order, for those items alone)."""
        kernel = self._kernel(now, (self.tau_days if tau_days is None else tau_days) * 86_400)
        if items is None:
            return np.asarray(self.counts.T @ kernel).ravel()
        if self._by_item is None or self._by_item[0] is not self.counts:
            self._by_item = (self.counts, sp.csr_matrix(self.counts.T))  # items x bins
        return np.asarray(self._by_item[1][items] @ kernel).ravel()

    def _kernel(self, now: float, tau: float) -> np.ndarray:
        """exp(-|now - bin centre| / tau) per time bin, as float32.

        Beyond ~103.3 tau the value rounds to float32 zero: only the bins within _KERNEL_REACH taus
        of ``now`` are computed (the rest are exactly what exp would round to), so a short tau
        costs a fraction of the ~8k exps of the whole history."""
        n_bins = self.counts.shape[0]
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
        return {"tau_days": self.tau_days, "bin_days": self.bin_days}

    def arrays(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "category_items": self.category_items,
            "origin": np.array([self.origin]),
            "category_names": np.array(self.category_names, dtype=np.str_),
        }

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        ch.counts = arrays["counts"].astype(np.float32)
        ch.category_items = arrays["category_items"].astype(np.float32)
        ch.origin = float(arrays["origin"][0])
        ch.category_names = [str(c) for c in arrays["category_names"].tolist()]
        return ch


class VectorChannel(RecallChannel):
    """Faiss inner-product index over L2-normalised item embeddings (ALS item factors by default).

    The query vector is the recency-weighted mean of the embeddings of the user's last ``recent``
    items; ``recall`` searches the index (what scales to large catalogues), ``score`` is the
    same inner product over every item.
    """

    name: ClassVar[str] = "vector"

    def __init__(self, recent: int = 20, half_life_days: float = 30.0, factors: int = 64) -> None:
        self.recent = recent
        self.half_life_days = half_life_days
        self.factors = factors
        self.embeddings = np.zeros((0, 0), dtype=np.float32)
        self.index: faiss.Index | None = None

    def fit(self, data: InteractionData, embeddings: np.ndarray | None = None) -> Self:
        if embeddings is None:
            embeddings = ALSChannel(factors=self.factors).fit(data).item_embeddings()
        import faiss

        emb = np.ascontiguousarray(embeddings, dtype=np.float32).copy()
        faiss.normalize_L2(emb)
        self.embeddings = emb
        self._build()
        self.n_items = data.n_items
        self.default_now = data.max_time()
        return self

    def _build(self) -> None:
        import faiss

        self.index = faiss.IndexFlatIP(self.embeddings.shape[1])
        self.index.add(self.embeddings)

    def query_vector(self, query: UserQuery) -> np.ndarray | None:
        if len(query.history) == 0:
            return None
        items = query.history[-self.recent :]
        times = query.times[-self.recent :] if len(query.times) else np.zeros(len(items))
        w = recency_weights(times, query.reference_time(self.default_now), self.half_life_days)
        vec = (w[:, None] * self.embeddings[items]).sum(axis=0, keepdims=True).astype(np.float32)
        import faiss

        faiss.normalize_L2(vec)
        return vec

    def score(self, query: UserQuery) -> np.ndarray:
        vec = self.query_vector(query)
        if vec is None:
            return np.full(self.n_items, NEG, dtype=np.float32)
        return (self.embeddings @ vec[0]).astype(np.float32)

    def recall(self, query: UserQuery, n: int, exclude: np.ndarray | None = None):  # type: ignore[override]
        from zerorec.recall.base import Candidates

        vec = self.query_vector(query)
        if vec is None or self.index is None:
            return Candidates(np.zeros(0, np.int64), np.zeros(0, np.float32), self.name)
        skip = set(query.history.tolist()) | (set(exclude.tolist()) if exclude is not None else set())
        k = min(self.n_items, n + len(skip))
        scores, items = self.index.search(vec, k)
        keep = [
            (i, s)
            for i, s in zip(items[0].tolist(), scores[0].tolist(), strict=True)
            if i >= 0 and i not in skip
        ][:n]
        return Candidates(
            np.array([i for i, _ in keep], np.int64), np.array([s for _, s in keep], np.float32), self.name
        )

    def params(self) -> dict[str, Any]:
        return {"recent": self.recent, "half_life_days": self.half_life_days, "factors": self.factors}

    def arrays(self) -> dict[str, Any]:
        assert self.index is not None
        import faiss

        return {"index": faiss.serialize_index(self.index).tobytes()}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        import faiss

        ch.index = faiss.deserialize_index(np.frombuffer(arrays["index"], dtype=np.uint8))
        ch.embeddings = ch.index.reconstruct_n(0, ch.index.ntotal)
        return ch


class FreshChannel(RecallChannel):
    """Newest items first: score = exp(-age / tau) for items that exist at the reference time."""

    name: ClassVar[str] = "fresh"

    def __init__(self, tau_days: float = 30.0) -> None:
        self.tau_days = tau_days
        self.created = np.zeros(0, dtype=np.float64)

    def fit(self, data: InteractionData) -> Self:
        assert data.item_created is not None
        self.created = data.item_created.astype(np.float64)
        self.n_items = data.n_items
        self.default_now = max(data.max_time(), float(self.created.max()) if len(self.created) else 0.0)
        return self

    def score(self, query: UserQuery) -> np.ndarray:
        now = query.reference_time(self.default_now)
        age = (now - self.created) / 86_400
        out = np.exp(-np.maximum(age, 0.0) / self.tau_days).astype(np.float32)
        out[age < 0] = NEG
        return out

    def params(self) -> dict[str, Any]:
        return {"tau_days": self.tau_days}

    def arrays(self) -> dict[str, Any]:
        return {"created": self.created}

    @classmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        ch = cls(**params)
        ch.created = arrays["created"].astype(np.float64)
        return ch


CHANNELS: dict[str, type[RecallChannel]] = {
    c.name: c for c in (EASEChannel, ALSChannel, ItemCFChannel, HotChannel, VectorChannel, FreshChannel)
}
