"""Train and serve the whole recommender: channels -> merge -> DeepFM (ONNX) -> rerank.

``train_recommender`` fits everything on interactions (torch only here); ``Recommender`` is what a
serving function holds: ``Recommender.from_files(bundle.files)`` then ``recommend(user_id, k)`` or
the stage calls (``query``, ``candidates``, ``rank``, ``rerank``) for one user in a few ms.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from zerorec.data.interactions import InteractionData
from zerorec.errors import IntegrityError, InvalidInputError
from zerorec.features import (
    GENRE_SLOTS,
    ItemFeatures,
    build_features,
    channel_signals,
    dense_names,
    sparse_cardinalities,
)
from zerorec.ranking.features import (
    CONTEXT_CARDINALITIES,
    FEATURE_GROUPS,
    SERVICE_DENSE,
    ServiceSnapshot,
    context_indices,
    mask_groups,
    service_dense,
)
from zerorec.recall.base import Candidates, RecallChannel, UserQuery
from zerorec.recall.merge import MergedCandidates, merge
from zerorec.recall.merge import fill as fill_merged
from zerorec.rerank import RerankConfig, rerank

if TYPE_CHECKING:  # training only: serving never imports pandas
    import pandas as pd
    import scipy.sparse as sp

# The channels (and scipy.sparse) are imported where they are built or used: a data-only function
# (reranking, user, item) loads the vocabulary, histories and item data with numpy alone (~0.15 s
# of cold start).

CHANNEL_ORDER = ("ease", "als", "itemcf", "vector", "hot", "fresh")
USER_FILES = ("users.json", "history.npz", "weights.npz")  # the user-sized files of a bundle
Progress = Callable[[str], None]


@dataclass
class PipelineConfig:
    """Every hyper-parameter of the pipeline (chosen on the validation cut, never on test)."""

    ease_l2: float = 200.0
    ease_min_count: int = 3
    # EASE's closed form on the most popular items only: B is head x head (5k: 50 MB as float16),
    # dense, as it wins on ml-latest-small (docs/evaluation: top-k rows lose 0.004-0.01 NDCG@10)
    ease_max_items: int = 5_000
    ease_topk: int = 0  # > 0: serve B's rows as top-k neighbour lists (0: dense head x head)
    als_factors: int = 64
    als_regularization: float = 0.05
    als_iterations: int = 15
    als_bm25: bool = True
    itemcf_k: int = 50
    hot_tau_days: float = 20.0
    fresh_tau_days: float = 30.0
    vector_recent: int = 20
    quotas: dict[str, int] = field(
        default_factory=lambda: {"ease": 250, "itemcf": 100, "als": 80, "vector": 40, "hot": 50, "fresh": 20}
    )
    n_candidates: int = 500
    hard_negatives: int = 60
    ranker_max_users: int | None = None  # ranker rows from a seeded sample of this many users
    random_negatives: int = 20
    ranker_epochs: int = 8
    ranker_embed_dim: int = 8
    ranker_hidden: tuple[int, ...] = (64, 32)
    ranker_threads: int = 1  # the net is tiny: a 2nd torch thread mostly spins on a busy box
    # chosen by `zerorec tune-rerank` on ml-latest-small's validation cut (docs/evaluation/)
    rerank_diversity: float = 0.1
    rerank_freshness: float = 0.15
    rerank_max_per_category: int | None = None
    rerank_pool: int = 100
    # Which feature services the ranker reads (zerorec.ranking.features.FEATURE_GROUPS; an ablation
    # switches one off: its columns hold defaults, "vectors" also drops the vector channel's quota).
    feature_groups: tuple[str, ...] = FEATURE_GROUPS
    # The final order, chosen on the validation cut (`select_serving`): DeepFM's scores blended with
    # one channel's order, 0 = DeepFM alone, 1 = the channel's order (when nothing beats it).
    blend_channel: str | None = None
    blend_weight: float = 0.0
    select_serving: bool = True  # cross-fit the ranker on the validation cut and choose the above
    ranker_ensemble: int = 3  # DeepFMs (seeds seed, seed+1, ...) averaged into the served ranker
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ranker_hidden"] = list(self.ranker_hidden)
        out["feature_groups"] = list(self.feature_groups)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PipelineConfig:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        if "ranker_hidden" in known:
            known["ranker_hidden"] = tuple(known["ranker_hidden"])
        if "feature_groups" in known:
            known["feature_groups"] = tuple(known["feature_groups"])
        return cls(**known)

    def quota(self, channel: str) -> int:
        """The channel's recall quota (0 for the vector channel when the vectors group is off)."""
        if channel == "vector" and "vectors" not in self.feature_groups:
            return 0
        return self.quotas.get(channel, 0)


@dataclass
class Recommendation:
    """One recommended item with its provenance and the reasons it moved."""

    item_id: str
    score: float
    channel: str
    reasons: tuple[str, ...] = ()


def make_channels(config: PipelineConfig) -> dict[str, RecallChannel]:
    from zerorec.recall.channels import (
        ALSChannel,
        EASEChannel,
        FreshChannel,
        HotChannel,
        ItemCFChannel,
        VectorChannel,
    )

    return {
        "ease": EASEChannel(config.ease_l2, config.ease_min_count, config.ease_max_items, config.ease_topk),
        "als": ALSChannel(
            config.als_factors,
            config.als_regularization,
            config.als_iterations,
            bm25=config.als_bm25,
            seed=config.seed,
        ),
        "itemcf": ItemCFChannel(config.itemcf_k),
        "vector": VectorChannel(recent=config.vector_recent, factors=config.als_factors),
        "hot": HotChannel(config.hot_tau_days),
        "fresh": FreshChannel(config.fresh_tau_days),
    }


def fit_channels(
    data: InteractionData, config: PipelineConfig, progress: Progress | None = None
) -> dict[str, RecallChannel]:
    """Fit every channel; the vector channel indexes the ALS item factors."""
    from zerorec.recall.channels import ALSChannel, VectorChannel

    channels = make_channels(config)
    for name, channel in channels.items():
        if progress:
            progress(f"fit {name}")
        if isinstance(channel, VectorChannel):
            als = channels["als"]
            assert isinstance(als, ALSChannel)
            channel.fit(data, als.item_embeddings())
        else:
            channel.fit(data)
    return channels


class Recommender:
    """A fitted pipeline over one item vocabulary; cheap per-user calls, safe-file persistence."""

    def __init__(
        self,
        data: InteractionData,
        channels: dict[str, RecallChannel],
        config: PipelineConfig,
        ranker_onnx: bytes | None = None,
        items: ItemFeatures | None = None,
    ) -> None:
        self.data = data
        self.channels = channels
        self.config = config
        self.items = items or ItemFeatures.from_data(data)
        self.ranker_onnx = ranker_onnx
        # Offline only (training, evaluation, recommend-batch): the training events, for the service
        # features as of each query's time. Serving passes a KV snapshot to `rank` instead.
        self.event_log: Any = None
        self.scorer = None
        if ranker_onnx is not None:
            from zerorec.ranking.onnx_scorer import OnnxScorer

            self.scorer = OnnxScorer(ranker_onnx)

    # ---- one user -------------------------------------------------------------------------
    def query(
        self, user_id: str | None, recent_items: Sequence[str] | None = None, now: float | None = None
    ) -> UserQuery:
        """Known user: stored history (plus ``recent_items``); unknown: ``recent_items`` only.

        An unknown user with no (known) recent items is a cold-start query: hot + fresh.
        """
        user = self.data.user_index.get(str(user_id)) if user_id is not None else None
        hist = np.zeros(0, np.int64)
        times = np.zeros(0, np.float64)
        if user is not None:
            hist, times = self.data.history(user)
        if recent_items:
            extra = [self.data.item_index[i] for i in recent_items if i in self.data.item_index]
            extra = [i for i in dict.fromkeys(extra) if i not in set(hist.tolist())]
            if extra:
                t_last = float(times.max()) if len(times) else self.data.max_time()
                hist = np.concatenate([hist, np.array(extra, np.int64)])
                times = np.concatenate([times, np.full(len(extra), t_last)])
        return UserQuery(user=user, history=hist, times=times, now=now)

    def score_vectors(self, query: UserQuery) -> dict[str, np.ndarray]:
        """Every channel's scores over the whole catalogue: the brute-force reference of
        `retrieve` (tests, analysis). Serving and evaluation never call it."""
        return {name: ch.score(query) for name, ch in self.channels.items()}

    def retrieve(
        self, query: UserQuery, n: int | None = None, exclude: np.ndarray | None = None
    ) -> dict[str, Candidates]:
        """Each channel's top list from its index (never a history or excluded item), at least
        ``n_candidates`` deep whatever ``n``: the lists the merge takes its quotas from, `fill`
        tops up from, and the ranker's ranks come from. A cold-start query (no history) asks hot
        and fresh only."""
        depth = max(n or 0, self.config.n_candidates)  # the ranks' depth is the same for any n
        cold = len(query.history) == 0
        out: dict[str, Candidates] = {}
        for name in CHANNEL_ORDER:
            channel = self.channels.get(name)
            if channel is None or (cold and name not in ("hot", "fresh")):
                continue
            out[name] = channel.recall(query, depth, exclude)
        return out

    def candidates(
        self,
        query: UserQuery,
        n: int | None = None,
        exclude: np.ndarray | None = None,
        lists: Mapping[str, Candidates] | None = None,
        fill: bool = False,
    ) -> MergedCandidates:
        """Merged recall (quotas, de-dup, provenance), never a history or excluded item.

        ``lists``: `retrieve`'s answer for the same ``n`` and ``exclude`` (computed when not
        given). ``fill``: when overlapping quotas leave fewer than ``n`` items, top the list up from
        the channels' next-best items (serving asks for n; training and evaluation use the quotas)."""
        n = n or self.config.n_candidates
        lists = lists if lists is not None else self.retrieve(query, n, exclude)
        answers = []
        cold = len(query.history) == 0
        for name in CHANNEL_ORDER:
            if name not in lists:
                continue
            quota = self.config.quota(name)
            if cold and name in ("hot", "fresh"):
                quota = n  # cold start: hot + fresh fill the list
            if quota <= 0:
                continue
            ans = lists[name]
            answers.append(Candidates(ans.items[:quota], ans.scores[:quota], name))
        if cold and query.categories and "hot" in self.channels:
            from zerorec.recall.channels import HotChannel

            hot = self.channels["hot"]
            assert isinstance(hot, HotChannel)
            answers.insert(0, hot.boosted(query, query.categories, n, exclude))
        merged = merge(answers, limit=n)
        if fill and not cold and len(merged) < n:
            merged = fill_merged(merged, [lists[a.channel] for a in answers], n)
        return merged

    def candidate_scores(self, query: UserQuery, items: np.ndarray) -> dict[str, np.ndarray]:
        """Every channel's score of ``items`` alone (-inf: the channel has none for an item)."""
        return {name: ch.score_items(query, items) for name, ch in self.channels.items()}

    def signals(
        self, query: UserQuery, merged: MergedCandidates, lists: Mapping[str, Candidates]
    ) -> np.ndarray:
        """The ranker's per-channel inputs for the candidates (`features.channel_signals`): their
        scores, and their ranks in the channels' `retrieve` lists."""
        return channel_signals(lists, self.candidate_scores(query, merged.items), merged.items, CHANNEL_ORDER)

    def features(
        self,
        query: UserQuery,
        merged: MergedCandidates,
        signals: np.ndarray,
        service: ServiceSnapshot | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """DeepFM's (sparse, dense): `features.build_features` (channels, popularity, the user's
        history) then the service features (`ranking.features`: Spark, Flink, context).

        ``service``: the serving snapshot from the KV; without one, the offline event log's as of
        the query's time (point in time), else defaults."""
        from zerorec.recall.channels import HotChannel

        groups = self.config.feature_groups
        hot = self.channels.get("hot")
        now = query.reference_time(self.data.max_time())
        sparse, dense = build_features(
            query,
            merged,
            signals,
            CHANNEL_ORDER,
            self.items,
            hot if isinstance(hot, HotChannel) else None,
            now,
        )
        if service is None:
            service = (
                self.event_log.snapshot(query.user, merged.items, now)
                if self.event_log is not None
                else ServiceSnapshot.empty(len(merged))
            )
        base_sparse = sparse.shape[1]
        clock = service.as_of if service.as_of is not None else now
        ctx = np.broadcast_to(
            context_indices(context, clock, groups), (len(merged), len(CONTEXT_CARDINALITIES))
        )
        sparse = np.concatenate([sparse, ctx], axis=1)
        dense = np.concatenate([dense, service_dense(service, groups)], axis=1)
        mask_groups(sparse, dense, groups, dense_names(CHANNEL_ORDER), base_sparse, self.data.n_items)
        return self._fit_width(sparse, dense)

    def _fit_width(self, sparse: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A ranker of an older bundle takes a prefix of today's columns (new ones are appended)."""
        if self.scorer is not None:
            if self.scorer.n_sparse is not None:
                sparse = sparse[:, : self.scorer.n_sparse]
            if self.scorer.n_dense is not None:
                dense = dense[:, : self.scorer.n_dense]
        return np.ascontiguousarray(sparse), np.ascontiguousarray(dense)

    def rank(
        self,
        query: UserQuery,
        merged: MergedCandidates,
        lists: Mapping[str, Candidates] | None = None,
        signals: np.ndarray | None = None,
        service: ServiceSnapshot | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """Ranker scores for the merged candidates (DeepFM via ONNX, blended with a channel's order
        as chosen on validation, `blend_scores`; fallback: EASE then hot).

        With ``signals`` (recall's, see `signals`) the channels are not asked here: the ranking
        function holds no channel but hot. ``lists``: `retrieve`'s answer (computed if needed).
        ``service`` / ``context``: the serving snapshot of the feature services and the request
        context (see `features`)."""
        if len(merged) == 0:
            return np.zeros(0, np.float32)
        if self.scorer is None:
            return fallback_scores(merged, self.candidate_scores(query, merged.items))
        if signals is None:
            lists = lists if lists is not None else self.retrieve(query)
            signals = self.signals(query, merged, lists)
        sparse, dense = self.features(query, merged, signals, service, context)
        probs = self.scorer.score(sparse, dense)
        return blend_scores(probs, signals, self.config.blend_channel, self.config.blend_weight)

    def rerank(
        self,
        query: UserQuery,
        merged: MergedCandidates,
        scores: np.ndarray,
        k: int,
        seen: Sequence[int] = (),
        rerank_config: RerankConfig | None = None,
    ) -> list[Recommendation]:
        """MMR/freshness/seen filter (zerorec.rerank) over the best ``rerank_pool`` ranked items.

        ``rerank_config`` overrides the configured rules for this call (used when tuning them)."""
        order = np.lexsort((np.arange(len(scores)), -scores))[: max(self.config.rerank_pool, k)]
        ids = self.data.item_ids
        cands = [(str(ids[merged.items[j]]), float(scores[j]), merged.channel[j]) for j in order]
        categories = {
            c[0]: self.data.item_categories[merged.items[j]] for c, j in zip(cands, order, strict=True)
        }
        created = {
            c[0]: float(self.items.created[merged.items[j]]) for c, j in zip(cands, order, strict=True)
        }
        cfg = rerank_config or RerankConfig(
            diversity=self.config.rerank_diversity,
            freshness_weight=self.config.rerank_freshness,
            max_per_category=self.config.rerank_max_per_category,
        )
        seen_ids = {str(ids[i]) for i in list(query.history) + list(seen)}
        out = rerank(
            cands,
            k,
            cfg,
            categories=categories,
            created_at=created,
            seen=seen_ids,
            now=query.reference_time(self.data.max_time()),
        )
        return [Recommendation(str(r.item_id), float(r.score), r.channel, r.reasons) for r in out]

    def recommend(
        self,
        user_id: str | None,
        k: int = 20,
        recent_items: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        categories: Mapping[str, float] | None = None,
    ) -> list[Recommendation]:
        """Full pipeline for one user; never an item in the user's history or ``exclude``."""
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        query = self.query(user_id, recent_items)
        if categories:
            query.categories = dict(categories)
        excl = np.array([self.data.item_index[i] for i in exclude if i in self.data.item_index], np.int64)
        lists = self.retrieve(query, exclude=excl)
        merged = self.candidates(query, exclude=excl, lists=lists)
        scores = self.rank(query, merged, lists)
        return self.rerank(query, merged, scores, k, seen=excl.tolist())

    def hot(self, n: int, category: str | None = None) -> list[Recommendation]:
        """The hot list at the newest training time (overall or for one category)."""
        from zerorec.recall.channels import HotChannel

        hot = self.channels["hot"]
        assert isinstance(hot, HotChannel)
        top = hot.top_category(category, n) if category else hot.recall(UserQuery(), n)
        return [
            Recommendation(str(self.data.item_ids[i]), float(s), "hot")
            for i, s in zip(top.items.tolist(), top.scores.tolist(), strict=True)
        ]

    # ---- persistence ------------------------------------------------------------------------
    def to_files(self) -> dict[str, bytes]:
        """Safe files for zerorec.bundle: channels/<name>/..., items.json, history.npz, ranker.onnx."""
        import scipy.sparse as sp

        files: dict[str, bytes] = {}
        for name, channel in self.channels.items():
            for fname, blob in channel.to_files().items():
                files[f"channels/{name}/{fname}"] = blob
        meta = {
            "config": self.config.to_json(),
            "item_ids": self.data.item_ids.tolist(),
            "item_categories": self.data.item_categories,
            "dense_features": [*dense_names(CHANNEL_ORDER), *SERVICE_DENSE],
            "n_users": self.data.n_users,
            "max_time": self.data.max_time(),
        }
        files["meta.json"] = json.dumps(meta).encode()
        files["users.json"] = json.dumps(self.data.user_ids.tolist()).encode()
        files["history.npz"] = _npz(self.data.times)
        files["weights.npz"] = _npz(self.data.matrix)
        for key, value in self.items.arrays().items():
            files[f"items/{key}.npz" if sp.issparse(value) else f"items/{key}.npy"] = (
                _npz(value) if sp.issparse(value) else _npy(np.asarray(value))
            )
        if self.ranker_onnx is not None:
            files["ranker.onnx"] = self.ranker_onnx
        return files

    @classmethod
    def from_files(
        cls, files: Mapping[str, bytes], widen: bool = True, max_users: int | None = None
    ) -> Recommender:
        """Inverse of to_files (no torch import); IntegrityError on a missing or foreign file.

        ``max_users``: a bundle of more users loads without their training histories (users.json,
        history.npz, weights.npz: user-sized arrays that do not belong in a serving pod at scale);
        every user is then unknown to the model, and their history is what the request or the KV's
        real-time state gives.

        Without channel files and ranker (a data-only function's files: reranking, user, item) the
        sparse matrices are read as `CSRArrays` with numpy alone: histories, vocabulary and item
        data as with scipy, no matrix algebra (and no `to_files`) on such a Recommender.
        ``widen=False`` leaves compact stored weights as published: call `widen` later (serving
        does, in the background, to shorten a cold start)."""
        data_only = "ranker.onnx" not in files and not any(k.startswith("channels/") for k in files)
        if data_only:
            load_csr: Callable[[bytes], Any] = CSRArrays.from_npz
        else:
            import scipy.sparse as sp

            def load_csr(blob: bytes) -> Any:
                return sp.load_npz(io.BytesIO(blob)).tocsr()

        try:
            meta = json.loads(files["meta.json"])
            n_users = int(meta.get("n_users", len(meta.get("user_ids", []))))
            with_users = max_users is None or n_users <= max_users
            if with_users:
                times = load_csr(files["history.npz"])
                weights = load_csr(files["weights.npz"])
                user_ids = meta["user_ids"] if "user_ids" in meta else json.loads(files["users.json"])
            else:
                empty = _empty_csr(len(meta["item_ids"]), data_only)
                times, weights, user_ids = empty, empty, []
        except (KeyError, ValueError) as exc:
            raise IntegrityError(f"recommender bundle is incomplete: {exc}") from exc
        config = PipelineConfig.from_json(meta["config"])
        item_arrays: dict[str, Any] = {}
        for k, v in files.items():
            if k.startswith("items/"):
                stem, _, ext = k[len("items/") :].rpartition(".")
                item_arrays[stem] = (
                    load_csr(v) if ext == "npz" else np.load(io.BytesIO(v), allow_pickle=False)
                )
        items = ItemFeatures.from_arrays(item_arrays)
        data_cls = InteractionData if with_users else CatalogueData
        data = data_cls(
            np.array(user_ids, dtype=object),
            np.array(meta["item_ids"], dtype=object),
            weights,
            times,
            [list(c) for c in meta["item_categories"]],
            items.created.astype(np.int64),
        )
        if isinstance(data, CatalogueData):
            data.newest = float(meta.get("max_time", float(items.created.max()) if len(items.created) else 0))
        channels: dict[str, RecallChannel] = {}
        if not data_only:
            from zerorec.recall.channels import CHANNELS

            for name, cls_ in CHANNELS.items():
                prefix = f"channels/{name}/"
                sub = {k[len(prefix) :]: v for k, v in files.items() if k.startswith(prefix)}
                if sub:
                    channels[name] = cls_.from_files(sub)
        rec = cls(data, channels, config, files.get("ranker.onnx"), items)
        if widen:
            rec.widen()
        return rec

    def widen(self) -> None:
        """Expand weights kept compact since loading (EASE's float16) to their serving precision."""
        for ch in self.channels.values():
            ch.widen()


@dataclass
class CatalogueData(InteractionData):
    """The item side of `InteractionData` without users (a serving load of a bundle of more users
    than `Recommender.from_files`'s ``max_users``): no user is known, the newest training time is
    the bundle's."""

    newest: float = 0.0

    def max_time(self) -> float:
        return self.newest


def _empty_csr(n_items: int, data_only: bool) -> Any:
    if data_only:
        return CSRArrays(np.zeros(0, np.float64), np.zeros(0, np.int32), np.zeros(1, np.int32), (0, n_items))
    import scipy.sparse as sp

    return sp.csr_matrix((0, n_items), dtype=np.float64)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@dataclass(frozen=True)
class CSRArrays:
    """A CSR matrix as `scipy.sparse.save_npz` stores it, read with numpy alone: what a data-only
    function needs of one (row slices through `indptr`/`indices`/`data`, `nnz`, `shape`)."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @classmethod
    def from_npz(cls, blob: bytes) -> CSRArrays:
        """ValueError unless `blob` is a save_npz'd CSR matrix (no pickled objects)."""
        with np.load(io.BytesIO(blob), allow_pickle=False) as f:
            fmt = f["format"].item()
            fmt = fmt.decode("ascii") if isinstance(fmt, bytes) else str(fmt)
            if fmt != "csr":
                raise ValueError(f"expected a CSR matrix, got format {fmt!r}")
            shape = (int(f["shape"][0]), int(f["shape"][1]))
            out = cls(f["data"], f["indices"], f["indptr"], shape)
        if len(out.indptr) != shape[0] + 1 or not len(out.indices) == len(out.data) == out.nnz:
            raise ValueError("inconsistent CSR arrays")
        return out


def _npz(mat: sp.spmatrix) -> bytes:
    import scipy.sparse as sp

    buf = io.BytesIO()
    sp.save_npz(buf, sp.csr_matrix(mat), compressed=True)
    return buf.getvalue()


def blend_scores(probs: np.ndarray, signals: np.ndarray, channel: str | None, weight: float) -> np.ndarray:
    """DeepFM's probabilities blended with ``channel``'s order (its rank in `signals`):
    1 / ((1 + model rank)^(1 - w) * (1 + channel rank)^w), a weighted reciprocal-rank fusion.
    w = 0 returns ``probs`` as they are; w = 1 is the channel's own order (DeepFM breaks ties among
    items off its list)."""
    if channel is None or weight <= 0 or channel not in CHANNEL_ORDER or len(probs) == 0:
        return probs
    p = np.asarray(probs, np.float64)
    model_rank = np.empty(len(p))
    model_rank[np.lexsort((np.arange(len(p)), -p))] = np.arange(len(p))
    chan_rank = signals[:, CHANNEL_ORDER.index(channel), 1].astype(np.float64)
    chan_rank = np.where(np.isnan(chan_rank), float(len(p) + 1_000_000), chan_rank)
    w = min(float(weight), 1.0)
    fused = -((1.0 - w) * np.log1p(model_rank) + w * np.log1p(chan_rank))
    return (np.exp(fused) + 1e-9 * p).astype(np.float32)


def fallback_scores(merged: MergedCandidates, scores: Mapping[str, np.ndarray]) -> np.ndarray:
    """Without a ranker: EASE score, hot popularity as a small tie-breaker (``scores``: each
    channel's scores of the merged items, `Recommender.candidate_scores`)."""
    ease = scores.get("ease")
    hot = scores.get("hot")
    base = np.zeros(len(merged), np.float64)
    if ease is not None:
        e = ease.astype(np.float64)
        base = np.where(np.isfinite(e), e, np.nanmin(np.where(np.isfinite(e), e, np.nan)) - 1.0)
        base = np.nan_to_num(base, nan=0.0)
    if hot is not None:
        base = base + 1e-3 * np.log1p(np.maximum(hot, 0))
    return base.astype(np.float32)


# ---- training -------------------------------------------------------------------------------
@dataclass
class UserEval:
    """One validation user's full candidate set with its features: what `select_serving` scores."""

    user: int
    labels: np.ndarray
    merged: MergedCandidates
    signals: np.ndarray
    sparse: np.ndarray
    dense: np.ndarray
    tops: dict[str, np.ndarray]  # each channel's own top list (SELECT_K items)


@dataclass
class RankerData:
    sparse: np.ndarray
    dense: np.ndarray
    labels: np.ndarray
    groups: np.ndarray  # user index per row
    evals: list[UserEval] = field(default_factory=list)


SELECT_K = 20  # the serving choice's validation lists: NDCG@10 + Recall@20 of their top 20
SELECT_MAX_USERS = 1000  # validation users whose whole candidate sets are kept (~0.2 GB at 500 candidates)


def ranker_training_data(
    data: InteractionData,
    channels: dict[str, RecallChannel],
    config: PipelineConfig,
    labels: Mapping[int, np.ndarray],
    progress_iter: Callable[[Any], Any] = lambda x: x,
    event_log: Any = None,
    eval_users: set[int] | None = None,
) -> tuple[RankerData, float]:
    """Candidates of the merged recall per user, labelled by held-out items; hard negatives (not
    clicked candidates, sampled) and random catalogue negatives. Returns data and candidate recall.

    ``event_log``: the cut's events (`ranking.features.EventLog`): each row's service features
    as of its user's request time, the newest event of the user's history (point in time: the
    held-out events, later by construction, never count). ``eval_users``: users whose whole
    candidate sets are kept (`RankerData.evals`) for `select_serving`."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(config.seed)
    rec = Recommender(data, channels, config)
    rec.event_log = event_log
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    evals: list[UserEval] = []
    hits = []
    with threadpool_limits(1, "blas"):  # per-user matvecs: BLAS threads only add sync cost
        for user in progress_iter(sorted(labels)):
            keep_eval = eval_users is not None and user in eval_users
            hit, part, ev = _user_rows(rec, user, labels[user], rng, keep_eval)
            hits.append(hit)
            if part is not None:
                parts.append(part)
            if ev is not None:
                evals.append(ev)
    out = RankerData(*(np.concatenate([p[i] for p in parts]) for i in range(4)), evals=evals)
    return out, float(np.mean(hits)) if hits else 0.0


def _user_ranker_rows(
    rec: Recommender, user: int, pos: np.ndarray, rng: np.random.Generator
) -> tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None]:
    """One user's rows (positives, sampled hard and random negatives) and candidate recall (the
    Spark engine's workers call this)."""
    hit, part, _ = _user_rows(rec, user, pos, rng)
    return hit, part


def _user_rows(
    rec: Recommender, user: int, pos: np.ndarray, rng: np.random.Generator, keep_eval: bool = False
) -> tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None, UserEval | None]:
    """One user's rows (positives, sampled hard and random negatives), candidate recall, and
    (``keep_eval``) the user's whole candidate set with features."""
    data, config = rec.data, rec.config
    query = UserQuery.from_data(data, user)
    lists = rec.retrieve(query)
    merged = rec.candidates(query, lists=lists)
    is_pos = np.isin(merged.items, pos)
    hit = float(is_pos.sum() / max(len(pos), 1))
    neg_idx = np.flatnonzero(~is_pos)
    hard = rng.choice(neg_idx, min(config.hard_negatives, len(neg_idx)), replace=False)
    keep = np.sort(np.concatenate([np.flatnonzero(is_pos), hard]))
    blocked = np.zeros(data.n_items, bool)
    blocked[merged.items] = True
    blocked[query.history] = True
    blocked[pos] = True
    pool = np.flatnonzero(~blocked)
    rand = rng.choice(pool, min(config.random_negatives, len(pool)), replace=False)
    if keep_eval:  # every candidate, then the random negatives: one feature pass per user
        keep = np.concatenate([keep, np.arange(len(merged), len(merged) + len(rand))])
        base = np.arange(len(merged))
    else:
        base = keep
    n_ch = len(merged.channel_names)
    both = MergedCandidates(
        np.concatenate([merged.items[base], rand.astype(np.int64)]),
        [merged.channel[i] for i in base] + ["random"] * len(rand),
        merged.channel_names,
        np.vstack([merged.channel_scores[base], np.full((len(rand), n_ch), np.nan, np.float32)]),
    )
    if len(both) == 0:
        return hit, None, None
    sig = rec.signals(query, both, lists)
    s, d = rec.features(query, both, sig)
    rows = keep if keep_eval else np.arange(len(both))
    part = (s[rows], d[rows], np.isin(both.items[rows], pos).astype(np.float32), np.full(len(rows), user))
    ev = None
    if keep_eval and len(merged):
        m = len(merged)
        tops = {c: lists[c].items[:SELECT_K] for c in lists}
        ev = UserEval(user, pos, merged, sig[:m], s[:m], d[:m], tops)
    return hit, part, ev


def train_recommender(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None = None,
    config: PipelineConfig | None = None,
    progress: bool = False,
    train_ranker: bool = True,
    log: Progress | None = None,
    keep_rows: bool = False,
) -> tuple[Recommender, dict[str, Any]]:
    """Fit the channels on a validation cut, train DeepFM on their candidates (labels: the cut's
    held-out items), choose the serving order on that cut (`select_serving`), then refit the
    channels on all interactions. Returns (recommender, info); ``keep_rows``: info["ranker_data"]
    holds the ranker's rows and validation users (for `ranker_variant`, the ablations)."""
    from tqdm.auto import tqdm

    config = config or PipelineConfig()
    say = log or (lambda msg: None)
    t0 = time.perf_counter()
    if len(interactions) == 0:
        raise InvalidInputError("no interactions to train on")
    from zerorec.resources import check_training_memory

    check_training_memory(interactions, items, config)  # refuse before native code can crash
    names = set(interactions["item_id"].unique().tolist())
    if items is not None:
        names |= set(items["item_id"].tolist())
    vocab = sorted(names)
    info: dict[str, Any] = {"config": config.to_json()}
    onnx_bytes = None
    if train_ranker:
        from zerorec.data.split import temporal_user_split

        inner, held = temporal_user_split(interactions)
        inner_data = InteractionData.from_frame(inner, items, item_vocabulary=vocab)
        say("fitting channels on the validation cut")
        inner_channels = fit_channels(inner_data, config, say)
        labels = {
            inner_data.user_index[u]: np.array([inner_data.item_index[i] for i in g], np.int64)
            for u, g in held.groupby("user_id")["item_id"]
            if u in inner_data.user_index
        }
        if config.ranker_max_users is not None and len(labels) > config.ranker_max_users:
            pick = np.random.default_rng(config.seed).choice(
                sorted(labels), config.ranker_max_users, replace=False
            )
            labels = {int(u): labels[int(u)] for u in pick}
        eval_users: set[int] = set()
        if config.select_serving and len(labels) >= 20:
            chosen = np.random.default_rng(config.seed + 1).permutation(sorted(labels))[:SELECT_MAX_USERS]
            eval_users = {int(u) for u in chosen}
        say("building ranker training data (features as of each user's request time)")
        it = (lambda x: tqdm(x, desc="ranker data", leave=False)) if progress else (lambda x: x)
        inner_log = _event_log(inner, inner_data)
        rd, cand_recall = ranker_training_data(
            inner_data, inner_channels, config, labels, it, inner_log, eval_users
        )
        info["validation_candidate_recall"] = cand_recall
        info["ranker_rows"] = len(rd.labels)
        inner_rec = Recommender(inner_data, inner_channels, config)
        config, onnx_bytes, ranker_info = ranker_variant(rd, inner_rec, config, progress, say)
        info.update(ranker_info)
        info["config"] = config.to_json()
        if keep_rows:
            info["ranker_data"] = (rd, inner_rec)
    say("fitting channels on all interactions")
    data = InteractionData.from_frame(interactions, items, item_vocabulary=vocab)
    channels = fit_channels(data, config, say)
    info["train_seconds"] = time.perf_counter() - t0
    info["data_window"] = {
        "start": int(interactions["timestamp"].min()),
        "end": int(interactions["timestamp"].max()),
        "interactions": len(interactions),
        "users": data.n_users,
        "items": data.n_items,
    }
    rec = Recommender(data, channels, config, onnx_bytes)
    rec.event_log = _event_log(interactions, data)
    return rec, info


def _event_log(frame: pd.DataFrame, data: InteractionData) -> Any:
    from zerorec.ranking.features import EventLog

    return EventLog.from_frame(
        frame, data.user_index, data.item_index, ItemFeatures.from_data(data).genre_matrix
    )


def ranker_variant(
    rd: RankerData,
    inner_rec: Recommender,
    config: PipelineConfig,
    progress: bool = False,
    say: Progress | None = None,
) -> tuple[PipelineConfig, bytes, dict[str, Any]]:
    """Train the ranker on ``rd`` with ``config.feature_groups`` (other groups' columns masked to
    their defaults) and choose the serving order on the validation cut. Returns the config with
    the choice, the ONNX bytes and facts for the training info."""
    say = say or (lambda msg: None)
    rd = _masked(rd, config, inner_rec.data.n_items)
    info: dict[str, Any] = {}
    if config.select_serving and rd.evals:
        say("choosing the serving order on the validation cut (2-fold cross-fitted ranker)")
        choice, table = select_serving(rd, inner_rec, config, progress)
        config = dataclasses.replace(config, **choice)
        info["serving_choice"] = {**choice, "table": table}
    say(f"training the ranker ({max(config.ranker_ensemble, 1)} seeds averaged)")
    onnx_bytes, ranker_info = _train_ranker(rd, inner_rec.data, config, progress)
    return config, onnx_bytes, {**info, **ranker_info}


def ranker_widths() -> tuple[int, int]:
    """(sparse, dense) columns of a ranker row."""
    return 3 + GENRE_SLOTS + len(CONTEXT_CARDINALITIES), len(dense_names(CHANNEL_ORDER)) + len(SERVICE_DENSE)


def _train_ranker(
    rd: RankerData, data: InteractionData, config: PipelineConfig, progress: bool
) -> tuple[bytes, dict[str, Any]]:
    """The served ranker: ``config.ranker_ensemble`` DeepFMs (seeds seed, seed+1, ...) averaged in
    one ONNX graph; (ONNX bytes, training facts)."""
    from zerorec.ranking.deepfm import DeepFMEnsemble, export_onnx

    members = [
        _fit_ranker(rd, data, dataclasses.replace(config, seed=config.seed + i), progress)
        for i in range(max(config.ranker_ensemble, 1))
    ]
    model = members[0] if len(members) == 1 else DeepFMEnsemble(members)
    buf = io.BytesIO()
    export_onnx(model, buf)
    return buf.getvalue(), {
        "ranker_best_epoch": getattr(model, "best_epoch", None),
        "ranker_history": getattr(model, "history", None),
    }


def _masked(rd: RankerData, config: PipelineConfig, n_items: int) -> RankerData:
    """``rd`` with the columns of the groups ``config`` switches off at their defaults (copies)."""
    if set(FEATURE_GROUPS) <= set(config.feature_groups):
        return rd
    base_sparse = rd.sparse.shape[1] - len(CONTEXT_CARDINALITIES)
    names = dense_names(CHANNEL_ORDER)

    def mask(s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return mask_groups(s.copy(), d.copy(), config.feature_groups, names, base_sparse, n_items)

    s, d = mask(rd.sparse, rd.dense)
    evals = [
        dataclasses.replace(e, **dict(zip(("sparse", "dense"), mask(e.sparse, e.dense), strict=True)))
        for e in rd.evals
    ]
    return RankerData(s, d, rd.labels, rd.groups, evals)


def _fit_ranker(
    rd: RankerData,
    data: InteractionData,
    config: PipelineConfig,
    progress: bool,
    rows: np.ndarray | None = None,
) -> Any:
    """DeepFM on ``rd`` (or its ``rows``), early-stopped on a tenth of its users."""
    from zerorec.ranking.deepfm import DeepFMConfig, train_deepfm

    sparse, dense, labels, groups = rd.sparse, rd.dense, rd.labels, rd.groups
    if rows is not None:
        sparse, dense, labels, groups = sparse[rows], dense[rows], labels[rows], groups[rows]
    rng = np.random.default_rng(config.seed)
    users = np.unique(groups)
    valid_users = rng.choice(users, max(1, len(users) // 10), replace=False)
    is_valid = np.isin(groups, valid_users)
    if labels[~is_valid].min() == labels[~is_valid].max():
        is_valid[:] = False
    n_genres = int(rd.sparse[:, 2:5].max())
    cards = [
        *sparse_cardinalities(data.n_users, data.n_items, n_genres, len(CHANNEL_ORDER)),
        *CONTEXT_CARDINALITIES,
    ]
    cfg = DeepFMConfig(
        embed_dim=config.ranker_embed_dim,
        hidden=config.ranker_hidden,
        epochs=config.ranker_epochs,
        seed=config.seed,
        threads=config.ranker_threads,
        shared_vocab_groups=((2, 3, 4),),
    )
    tr = ~is_valid
    valid = (sparse[is_valid], dense[is_valid], labels[is_valid]) if is_valid.any() else None
    return train_deepfm(sparse[tr], dense[tr], labels[tr], cards, cfg, valid=valid, progress=progress)


# Blends tried on the validation cut: DeepFM alone (0), with a channel's order, the channel alone (1).
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def select_serving(
    rd: RankerData, inner_rec: Recommender, config: PipelineConfig, progress: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Choose the final order on the validation cut, never on test: a 2-fold cross-fitted DeepFM
    (each half of the validation users scored by a ranker trained without them) blended with each
    of the two best channels' orders at BLEND_WEIGHTS, then the rerank rules on DeepFM alone and on
    the best of those; the best NDCG@10 +
    Recall@20 (the protocol's two headline figures) wins, ties to the earlier, simpler setting.
    Weight 1 without rerank is the channel alone, so the choice is never below the best channel on
    this cut. Returns the config fields and the table."""
    from threadpoolctl import threadpool_limits

    from zerorec.evaluation import ranking_metrics

    rng = np.random.default_rng(config.seed + 2)
    users = np.array([e.user for e in rd.evals])
    fold = np.zeros(len(users), np.int64)
    fold[rng.permutation(len(users))[: len(users) // 2]] = 1
    oof: dict[int, np.ndarray] = {}
    for f in (0, 1):
        held_users = users[fold == f]
        model = _fit_ranker(
            rd, inner_rec.data, config, progress, np.flatnonzero(~np.isin(rd.groups, held_users))
        )
        for e in rd.evals:
            if e.user in set(held_users.tolist()):
                oof[e.user] = model.predict_proba(e.sparse, e.dense)
    truth = [e.labels for e in rd.evals]

    def metrics(lists: list[np.ndarray]) -> dict[str, float]:
        m = ranking_metrics(np.array([_pad(x, SELECT_K) for x in lists]), truth, (10, 20))
        return {"ndcg@10": m["ndcg@10"], "recall@20": m["recall@20"], "score": m["ndcg@10"] + m["recall@20"]}

    channels = {
        c: metrics([e.tops.get(c, np.zeros(0, np.int64)) for e in rd.evals])
        for c in CHANNEL_ORDER
        if any(c in e.tops for e in rd.evals)
    }
    best = sorted(channels, key=lambda c: -channels[c]["score"])[:2]
    settings: list[tuple[str | None, float]] = [(None, 0.0)] + [
        (c, w) for c in best for w in BLEND_WEIGHTS if w > 0
    ]
    table: list[dict[str, Any]] = []

    def run(c: str | None, w: float, reranked: bool) -> None:
        lists = []
        for e in rd.evals:
            scores = blend_scores(oof[e.user], e.signals, c, w)
            if reranked:
                query = UserQuery.from_data(inner_rec.data, e.user)
                out = inner_rec.rerank(query, e.merged, scores, SELECT_K)
                lists.append(np.array([inner_rec.data.item_index[r.item_id] for r in out], np.int64))
            else:  # what rerank without rules returns: the best scores (candidates are never seen)
                lists.append(e.merged.items[np.lexsort((np.arange(len(scores)), -scores))[:SELECT_K]])
        table.append({"channel": c, "weight": w, "rerank": reranked, **metrics(lists)})

    with threadpool_limits(1, "blas"):
        for c, w in settings:
            run(c, w, False)
        # the rerank rules (tuned for DeepFM's order) on DeepFM alone and on the best blend
        best_plain = max(table, key=lambda r: r["score"])
        for c, w in dict.fromkeys([(None, 0.0), (best_plain["channel"], best_plain["weight"])]):
            run(c, w, True)
    best_row = max(table, key=lambda r: r["score"])  # max keeps the first of equals
    choice: dict[str, Any] = {"blend_channel": best_row["channel"], "blend_weight": best_row["weight"]}
    if not best_row["rerank"]:
        choice.update(rerank_diversity=0.0, rerank_freshness=0.0, rerank_max_per_category=None)
    table.append({"channels_alone": channels})
    return choice, table


# ---- evaluation -----------------------------------------------------------------------------
STAGES = ("merged", "ranked", "full")

# Rerank rules tried on the validation cut (tune_rerank); "ranked" (no rerank) is the reference.
RERANK_GRID: tuple[tuple[float, float, int | None], ...] = tuple(
    (d, f, c)
    for d in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
    for f in (0.0, 0.05, 0.15)
    for c in (None, 3, 5)
    if (d, f, c) != (0.0, 0.0, None)
)


@dataclass
class _UserRuns:
    """Top-k lists per row (channels, merged, ranked, one per rerank setting) and stage times."""

    rows: dict[str, list[np.ndarray]]
    candidates: list[np.ndarray]
    wall: dict[str, float]


def _run_users(
    rec: Recommender,
    users: Sequence[int],
    k: int,
    reranks: Mapping[str, RerankConfig | None],
    progress: bool = False,
) -> _UserRuns:
    """Run every stage once per user; each entry of ``reranks`` reranks the same ranked list.

    Wall times are cumulative per row: a channel row pays its index answer, ``merged`` every
    channel's answer + merge, ``ranked`` adds DeepFM, a rerank row adds its rerank."""
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    names = [c for c in CHANNEL_ORDER if c in rec.channels]
    runs = _UserRuns({n: [] for n in [*names, "merged", "ranked", *reranks]}, [], {})
    runs.wall = dict.fromkeys(runs.rows, 0.0)
    it = tqdm(users, desc="evaluate", leave=False) if progress else users
    with threadpool_limits(1, "blas"):  # per-user matvecs: BLAS threads only add sync cost
        for user in it:
            query = UserQuery.from_data(rec.data, int(user))
            lists: dict[str, Candidates] = {}
            t_lists = 0.0
            for n in names:  # each channel's own index answer (what serving merges)
                t = time.perf_counter()
                lists[n] = rec.channels[n].recall(query, rec.config.n_candidates)
                runs.rows[n].append(_pad(lists[n].items[:k], k))
                took = time.perf_counter() - t
                runs.wall[n] += took
                t_lists += took
            t = time.perf_counter()
            merged = rec.candidates(query, lists=lists)
            t_merged = time.perf_counter() - t + t_lists
            runs.rows["merged"].append(_pad(merged.items[:k], k))
            runs.wall["merged"] += t_merged
            runs.candidates.append(merged.items)
            t = time.perf_counter()
            scores = rec.rank(query, merged, lists)
            order = np.lexsort((np.arange(len(scores)), -scores))
            t_ranked = time.perf_counter() - t + t_merged
            runs.rows["ranked"].append(_pad(merged.items[order[:k]], k))
            runs.wall["ranked"] += t_ranked
            for name, cfg in reranks.items():
                t = time.perf_counter()
                out = rec.rerank(query, merged, scores, k, rerank_config=cfg)
                idx = np.array([rec.data.item_index[r.item_id] for r in out], np.int64)
                runs.rows[name].append(_pad(idx, k))
                runs.wall[name] += time.perf_counter() - t + t_ranked
    return runs


def _truth(rec: Recommender, split: Any) -> list[np.ndarray]:
    """Held-out items as indices of the recommender's vocabulary (-2: an item it never saw)."""
    ids = split.train.item_ids
    return [np.array([rec.data.item_index.get(ids[i], -2) for i in t], np.int64) for t in split.truth]


def stage_gains(
    rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = ("ndcg@10", "recall@20")
) -> list[dict[str, Any]]:
    """Which stage earns what: each stage's metrics and its change over the previous stage
    (the first line is the best single channel by NDCG@10)."""
    channels = [r for r in rows if r in CHANNEL_ORDER]
    best = max(channels, key=lambda r: rows[r]["ndcg@10"]) if channels else None
    chain = ([best] if best else []) + [r for r in STAGES if r in rows]
    out: list[dict[str, Any]] = []
    for i, name in enumerate(chain):
        entry: dict[str, Any] = {"stage": name if i or not best else f"best channel ({name})"}
        for m in (*metrics, "coverage@20", "diversity@20", "novelty@20"):
            entry[m] = rows[name][m]
            if i:
                entry[f"delta_{m}"] = rows[name][m] - rows[chain[i - 1]][m]
        out.append(entry)
    return out


def evaluate_protocol(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None = None,
    config: PipelineConfig | None = None,
    progress: bool = False,
    log: Progress | None = None,
    k: int = 20,
    trainer: Callable[..., tuple[Recommender, dict[str, Any]]] | None = None,
    ablation: bool = False,
) -> dict[str, Any]:
    """temporal-user-20: train on the train split (the ranker's validation cut is taken inside it),
    then one row per channel, the merged recall, recall+ranking and the full pipeline.
    ``trainer``: another engine with train_recommender's signature (the Spark engine).
    ``ablation`` (local engine): one more full-pipeline row per feature group switched off
    (`ranking.features.FEATURE_GROUPS`): the same channels, the ranker retrained and the serving
    order chosen again without the group (for "vectors", the vector channel's quota is 0 too)."""
    from zerorec.evaluation import candidate_recall, full_report, protocol_split

    config = config or PipelineConfig()
    ps = protocol_split(interactions, items)
    t0 = time.perf_counter()
    if trainer is None:
        rec, info = train_recommender(
            ps.train_frame, items, config, progress=progress, log=log, keep_rows=ablation
        )
    else:
        rec, info = trainer(ps.train_frame, items, config, progress=progress, log=log)
    train_s = time.perf_counter() - t0
    runs = _run_users(rec, ps.users.tolist(), k, {"full": None}, progress)
    truth = _truth(rec, ps)
    report: dict[str, Any] = {
        "protocol": "temporal-user-20",
        "users_evaluated": len(ps.users),
        "items": rec.data.n_items,
        "train_seconds": train_s,
        f"candidate_recall@{config.n_candidates}": candidate_recall(runs.candidates, truth),
        "validation_candidate_recall": info.get("validation_candidate_recall"),
        "rerank": {
            "diversity": config.rerank_diversity,
            "freshness": config.rerank_freshness,
            "max_per_category": config.rerank_max_per_category,
            "pool": config.rerank_pool,
        },
        "rows": {},
    }
    for n, recs in runs.rows.items():
        metrics = full_report(np.array(recs), truth, rec.data)
        metrics["wall_seconds"] = runs.wall[n]
        report["rows"][n] = metrics
    report["stages"] = stage_gains(report["rows"])
    report["serving_choice"] = {
        "blend_channel": rec.config.blend_channel,
        "blend_weight": rec.config.blend_weight,
        "rerank": rec.config.rerank_diversity > 0 or rec.config.rerank_freshness > 0,
        "validation": (info.get("serving_choice") or {}).get("table"),
    }
    if ablation and "ranker_data" in info:
        report["ablation"] = _ablation_rows(rec, info.pop("ranker_data"), config, ps, k, progress, log)
    return report


def _ablation_rows(
    rec: Recommender,
    ranker_data: tuple[RankerData, Recommender],
    config: PipelineConfig,
    ps: Any,
    k: int,
    progress: bool,
    log: Progress | None,
) -> dict[str, dict[str, float]]:
    """The full pipeline with each feature group off: "full -<group>" -> its metrics."""
    from zerorec.evaluation import full_report

    rd, inner_rec = ranker_data
    say = log or (lambda msg: None)
    truth = _truth(rec, ps)
    out: dict[str, dict[str, float]] = {}
    for group in FEATURE_GROUPS:
        t = time.perf_counter()
        say(f"ablation: the ranker without the {group} features")
        cfg = dataclasses.replace(
            config, feature_groups=tuple(g for g in config.feature_groups if g != group)
        )
        cfg, onnx_bytes, _ = ranker_variant(rd, inner_rec, cfg, progress, say)
        variant = Recommender(rec.data, rec.channels, cfg, onnx_bytes, rec.items)
        variant.event_log = rec.event_log
        runs = _run_users(variant, ps.users.tolist(), k, {"full": None}, progress)
        metrics = full_report(np.array(runs.rows["full"]), truth, rec.data)
        metrics["wall_seconds"] = runs.wall["full"]
        metrics["train_seconds"] = time.perf_counter() - t - runs.wall["full"]
        out[f"full -{group}"] = metrics
    return out


def tune_rerank(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None = None,
    config: PipelineConfig | None = None,
    grid: Sequence[tuple[float, float, int | None]] = RERANK_GRID,
    max_ndcg_loss: float = 0.01,
    progress: bool = False,
    log: Progress | None = None,
    k: int = 20,
) -> dict[str, Any]:
    """Choose (diversity, freshness, max_per_category) on the VALIDATION cut only.

    The test protocol's train split is cut again by the same temporal-user-20 rule; the pipeline
    trains on the inner part and every setting reranks the same ranked lists of the validation
    users. Chosen: the largest relative gain in intra-list diversity@20 plus coverage@20 over
    recall+ranking among settings losing at most ``max_ndcg_loss`` (relative) of its NDCG@10.
    The test split's held-out items are never read.
    """
    from zerorec.evaluation import full_report, protocol_split

    config = config or PipelineConfig()
    outer = protocol_split(interactions, items)
    val = protocol_split(outer.train_frame, items)
    rec, _ = train_recommender(val.train_frame, items, config, progress=progress, log=log)
    settings = {
        f"d={d:g} f={f:g} cap={c}": RerankConfig(diversity=d, freshness_weight=f, max_per_category=c)
        for d, f, c in grid
    }
    runs = _run_users(rec, val.users.tolist(), k, settings, progress)
    truth = _truth(rec, val)
    ref = full_report(np.array(runs.rows["ranked"]), truth, rec.data)
    table = []
    for name, (d, f, c) in zip(settings, grid, strict=True):
        m = full_report(np.array(runs.rows[name]), truth, rec.data)
        gain = _rel_gain(m, ref, "diversity@20") + _rel_gain(m, ref, "coverage@20")
        ok = m["ndcg@10"] >= (1 - max_ndcg_loss) * ref["ndcg@10"]
        table.append(
            {
                "setting": name,
                "diversity": d,
                "freshness": f,
                "max_per_category": c,
                "gain": gain,
                "within_budget": bool(ok),
                **m,
                "wall_seconds": runs.wall[name],
            }
        )
    fine = [row for row in table if row["within_budget"] and row["gain"] > 0]
    best = max(fine, key=lambda row: row["gain"]) if fine else None
    return {
        "protocol": "temporal-user-20 inside the train split (validation cut)",
        "users_evaluated": len(val.users),
        "max_ndcg_loss": max_ndcg_loss,
        "ranked": ref,
        "chosen": None
        if best is None
        else {key: best[key] for key in ("diversity", "freshness", "max_per_category")},
        "chosen_metrics": best,
        "table": table,
    }


def _rel_gain(m: Mapping[str, float], ref: Mapping[str, float], key: str) -> float:
    return m[key] / ref[key] - 1.0 if ref[key] > 0 else 0.0


def _pad(items: np.ndarray, k: int) -> np.ndarray:
    out = np.full(k, -1, np.int64)
    out[: min(k, len(items))] = items[:k]
    return out
