"""The serving side of the pipeline: one loaded bundle, split into the stages the functions serve.

Every stage wraps C's `zerorec.pipeline.Recommender` (loaded with `Recommender.from_files` from a
verified bundle) and adds only what the online path needs: the user's real-time state from the KV
store (one pipelined round trip, `zerorec.realtime`), the HTTP contract types (`zerorec.api`) and
id <-> index mapping. Channel scoring, merging, ranker features and reranking are C's functions,
called as they are. Sync and CPU-bound: the functions call these through `asyncio.to_thread`.

| stage | KV round trips | pipeline calls |
|---|---|---|
| RecallStage.recall | 1 (user state) unless the request has recent_items | retrieve, candidates, signals |
| RecallStage.hot | 1 (hot zset); the bundle's hot list when the KV has none | hot |
| RankingStage.score | 1 (user state) | query, rank with recall's signals (features + OnnxScorer) |
| RerankStage.rerank | 0 (seen items come in the request) | query, rerank (MMR, freshness, seen) |
| UserStage.profile | 1 (recent, seen, categories) | training history from the bundle |
| ItemStage.lookup | 1 (one HGETALL per id, pipelined) | bundle metadata for ids the KV lacks (if a model) |
| ItemAdmin.apply | 0 (produces item events; the consumer writes the KV) | - |

A KV outage degrades a stage to the bundle alone (logged), it does not fail the request.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from zerorec.api import (
    HotItem,
    HotResponse,
    Id,
    ItemMeta,
    ItemResponse,
    RankingRequest,
    RankingResponse,
    RecallRequest,
    RerankedItem,
    RerankRequest,
    RerankResponse,
    UserProfile,
)
from zerorec.bundle import LoadedBundle, latest_version, load_bundle
from zerorec.coldstart import ALL_PARTS, ModelParts
from zerorec.errors import BackendUnavailableError, InvalidInputError, NotFoundError
from zerorec.feedback import demote_near_negatives
from zerorec.pipeline import CHANNEL_ORDER, USER_FILES, Recommender
from zerorec.realtime import (
    RECENT_MAX,
    SEEN_MAX,
    ItemRecord,
    UserState,
    catalogue_from,
    catalogue_reads,
    hot_reads,
    item_reads,
    items_present_reads,
    present_from,
    user_state_from,
    user_state_reads,
)
from zerorec.recall.merge import MergedCandidates
from zerorec.serving import ModelSlot
from zerorec.settings import Settings, get_settings
from zerorec.storage import EventBus, KVStore, ObjectStore, kv_store, object_store
from zerorec.storage.kv import HGetAll

log = logging.getLogger("zerorec.online")
T = TypeVar("T")

# Items added since training: how many of the newest recall offers, and how many slots of a
# list reranking keeps for them (the ranker cannot score what it has never seen).
FRESH_REALTIME = 20
FRESH_SLOTS = 1


@dataclass(frozen=True)
class ServingModel:
    """A verified bundle loaded into the pipeline (no torch: onnxruntime, numpy, faiss)."""

    name: str
    version: str
    rec: Recommender
    manifest: dict[str, Any]

    def index(self, item_ids: Sequence[str]) -> np.ndarray:
        """Vocabulary index of each id, -1 for ids the model does not know."""
        get = self.rec.data.item_index.get  # map() keeps the loop in C (hundreds of ids a request)
        return np.fromiter(map(get, item_ids, repeat(-1)), dtype=np.int64, count=len(item_ids))

    def known(self, item_ids: Sequence[str]) -> np.ndarray:
        """Indices of the ids the model knows (unknown ids dropped, order kept)."""
        idx = self.index(item_ids)
        return idx[idx >= 0]


def load_model(
    store: ObjectStore,
    name: str,
    version: str = "latest",
    cache_dir: Path | None = None,
    parts: ModelParts = ALL_PARTS,
) -> ServingModel:
    """Fetch and verify bundle `name`/`version` (IntegrityError on any mismatch) and build the
    `parts` of it a stage uses: the files of other parts are not even fetched (reranking, user and
    item never download the channel matrices)."""
    bundle = load_bundle(store, name, version, cache_dir=cache_dir, select=parts.wants)
    return model_from_bundle(bundle, parts.max_users)


def model_from_bundle(bundle: LoadedBundle, max_users: int | None = None) -> ServingModel:
    """Build the pipeline from a verified bundle (whatever parts of it were fetched). Weights stored
    compact (EASE's float16) are widened in a background thread: the model serves at once, with
    the same scores, and gets faster when the thread is done."""
    rec = Recommender.from_files(bundle.files, widen=False, max_users=max_users)
    if rec.data.n_users == 0:  # histories left out: let their bytes go (a prefetch future holds them)
        for name in USER_FILES:
            bundle.files.pop(name, None)
    threading.Thread(target=rec.widen, name=f"widen-{bundle.version}", daemon=True).start()
    return ServingModel(bundle.name, bundle.version, rec, bundle.manifest)


def _read_user(kv: KVStore, user_id: str) -> UserState:
    """The user's real-time state in one pipelined round trip; empty if the KV is unreachable."""
    try:
        return user_state_from(user_id, kv.read(user_state_reads(user_id)))
    except BackendUnavailableError as exc:
        log.warning("KV unavailable, serving %s without real-time state: %s", user_id, exc)
        return UserState(user_id, [], [], {})


def _merged(
    model: ServingModel,
    idx: np.ndarray,
    channels: Sequence[str],
    channel_scores: Sequence[dict[str, float]] | None = None,
) -> MergedCandidates:
    """Candidates from the wire back into C's MergedCandidates (channel_scores NaN where absent)."""
    names = list(CHANNEL_ORDER)
    scores = np.full((len(idx), len(names)), np.nan, dtype=np.float32)
    if channel_scores is not None:
        col = {c: k for k, c in enumerate(names)}
        for row, cs in enumerate(channel_scores):
            for c, s in cs.items():
                if c in col:
                    scores[row, col[c]] = s
    return MergedCandidates(idx, list(channels), names, scores)


def _candidate_dicts(
    item_ids: np.ndarray, merged: MergedCandidates, signals: np.ndarray
) -> list[dict[str, Any]]:
    """RecallCandidate dicts of merged candidates: `score` the merge order, finite channel scores,
    `signals` the candidate's row of `features.channel_signals` (`encode_signals`)."""
    m = len(merged)
    names = merged.channel_names
    ids = item_ids[merged.items].tolist()
    scores: list[dict[str, float]] = [{} for _ in range(m)]
    sc = merged.channel_scores
    rows, cols = np.nonzero(np.isfinite(sc))  # row-major: each row's channels in channel order
    for r, c, v in zip(rows.tolist(), cols.tolist(), sc[rows, cols].tolist(), strict=True):
        scores[r][names[c]] = v
    return [
        {
            "item_id": str(item),
            "score": (m - pos) / m,
            "channel": channel,
            "channel_scores": cs,
            "signals": sig,
        }
        for pos, (item, channel, cs, sig) in enumerate(
            zip(ids, merged.channel, scores, encode_signals(signals), strict=True)
        )
    ]


def encode_signals(signals: np.ndarray) -> list[str]:
    """Each candidate's row of `features.channel_signals` [M, C, 2] as base64 of little-endian
    float32 (score, rank) pairs: 64 characters for six channels. Exact (the channels score in
    float32), and a string costs ranking's validation and the BFF's JSON a fraction of 12 numbers."""
    rows = np.ascontiguousarray(signals, dtype="<f4").reshape(len(signals), -1)
    return [base64.b64encode(row).decode("ascii") for row in rows]


def decode_signals(candidates: Sequence[dict[str, Any]], signal_channels: Sequence[str]) -> np.ndarray:
    """Recall's `signals` of `candidates` as `features.channel_signals` [M, C, 2] in the model's
    channel order. NaN (the ranker's "channel absent") for a channel recall did not send, a
    candidate without signals, and a value that is not finite; InvalidInputError when a candidate's
    signals are not base64 of two float32 per channel of `signal_channels`."""
    names = list(CHANNEL_ORDER)
    out = np.full((len(candidates), len(names), 2), np.nan)
    pairs = [(j, names.index(c)) for j, c in enumerate(signal_channels) if c in names]
    width = 8 * len(signal_channels)  # bytes: two float32 per channel
    chars = 4 * -(-width // 3)  # its base64 length
    sigs = [c.get("signals") for c in candidates]
    rows = [r for r, s in enumerate(sigs) if s]
    for r in rows:
        if len(sigs[r]) != chars:
            raise InvalidInputError(
                f"candidate {candidates[r]['item_id']!r}: its signals are not two float32 for each "
                f"of the {len(signal_channels)} signal_channels"
            )
    try:  # unpadded (a multiple of 3 bytes each): one decode for all; else one per candidate
        if width % 3 == 0:
            blob = base64.b64decode("".join(sigs[r] for r in rows), validate=True)
        else:
            blob = b"".join(base64.b64decode(sigs[r], validate=True) for r in rows)
    except (binascii.Error, ValueError):
        bad = next(r for r in rows if not _is_base64(sigs[r]))
        raise InvalidInputError(f"candidate {candidates[bad]['item_id']!r}: signals is not base64") from None
    if rows and pairs:
        values = np.frombuffer(blob, dtype="<f4").astype(np.float64).reshape(len(rows), -1, 2)
        values[~np.isfinite(values) | (values[..., 1:2] < 0)] = np.nan  # a rank is never negative
        src, dst = (list(t) for t in zip(*pairs, strict=True))
        out[np.ix_(rows, dst)] = values[:, src]
    return out


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


class RecallStage:
    """Multi-channel candidates for one user; real-time recent items feed item-CF, EASE, vectors."""

    def __init__(self, model: ServingModel, kv: KVStore) -> None:
        self.model = model
        self.kv = kv

    def recall(self, req: RecallRequest) -> dict[str, Any]:
        """RecallResponse as plain data (the function dumps it with orjson; no model objects for
        hundreds of candidates): merged candidates, best first; `score` is the merge order (1 =
        first), per-channel raw scores in `channel_scores`. Never an item of the user's history,
        `exclude` or deleted since training; items added since training follow as channel `fresh`
        (score 0)."""
        rec = self.model.rec
        recent, categories = list(req.recent_items), {}
        negatives: list[str] = []  # disliked / hidden (zerorec.feedback)
        reads = catalogue_reads(FRESH_REALTIME)
        if not recent:  # the BFF did not pass the user's history: read it in the same round trip
            reads = user_state_reads(req.user_id) + reads
        try:
            results = self.kv.read(reads)
        except BackendUnavailableError as exc:
            log.warning("KV unavailable, recall for %s from the bundle alone: %s", req.user_id, exc)
            results = [{} if isinstance(op, HGetAll) else [] for op in reads]
        fresh, deleted = catalogue_from(results[-2:])
        if not recent:
            state = user_state_from(req.user_id, results[:-2])
            recent, categories = state.recent_items, state.category_affinity
            negatives = state.negative_items
        query = rec.query(req.user_id, recent)
        query.categories = categories
        exclude = self.model.known([*req.exclude, *deleted, *negatives])
        lists = rec.retrieve(query, req.n, exclude)  # each channel's index answer, n deep
        merged = rec.candidates(query, req.n, exclude, lists, fill=True)  # n as asked
        out = _candidate_dicts(rec.data.item_ids, merged, rec.signals(query, merged, lists))
        demote_near_negatives(out, negatives, rec)
        skip = {*req.exclude, *deleted, *recent, *negatives}
        unknown = [i for i in fresh if i not in rec.data.item_index and i not in skip]
        if unknown:  # only items with metadata: a fresh marker without its item hash is a ghost
            try:
                unknown = present_from(unknown, self.kv.read(items_present_reads(unknown)))
            except BackendUnavailableError:
                unknown = []
        out += [{"item_id": i, "score": 0.0, "channel": "fresh", "channel_scores": {}} for i in unknown]
        return {
            "candidates": out,
            "signal_channels": list(CHANNEL_ORDER),
            "model_version": self.model.version,
        }

    def hot(self, n: int, category: str | None = None) -> HotResponse:
        """The real-time hot list from the KV (consumer-maintained), else the bundle's."""
        try:
            (top,) = self.kv.read(hot_reads(n, category))
        except BackendUnavailableError as exc:
            log.warning("KV unavailable, hot list from the bundle: %s", exc)
            top = []
        if top:
            items = [HotItem(item_id=i, score=float(s), channel="hot") for i, s in top]
        else:
            items = [
                HotItem(item_id=r.item_id, score=r.score, channel="hot")
                for r in self.model.rec.hot(n, category)
            ]
        return HotResponse(items=items)


class RankingStage:
    """DeepFM (ONNX) scores for a candidate batch, with C's features for this user: the channel
    features come from recall's signals, so this stage holds no channel but hot."""

    def __init__(self, model: ServingModel, kv: KVStore) -> None:
        self.model = model
        self.kv = kv

    def score(self, req: RankingRequest) -> RankingResponse:
        """One score per candidate, same order; ids the model does not know score 0."""
        rec = self.model.rec
        state = _read_user(self.kv, req.user_id)  # the only KV round trip
        query = rec.query(req.user_id, state.recent_items)
        query.categories = state.category_affinity
        cands = req.candidates
        idx = self.model.index([c["item_id"] for c in cands])
        known = np.flatnonzero(idx >= 0)
        out = np.zeros(len(cands), dtype=np.float32)
        if len(known):
            kept = [cands[k] for k in known]
            merged = _merged(
                self.model,
                idx[known],
                [c["channel"] for c in kept],
                [c.get("channel_scores") or {} for c in kept],
            )
            out[known] = rec.rank(query, merged, signals=decode_signals(kept, req.signal_channels))
        return RankingResponse.model_construct(scores=out.tolist(), model_version=self.model.version)


class RerankStage:
    """MMR, freshness and the seen filter (zerorec.rerank through the pipeline's rerank)."""

    def __init__(self, model: ServingModel, diversity: float | None = None) -> None:
        self.model = model
        if diversity is not None:  # a per-deployment override of the trained config
            rec = model.rec
            rec.config = dataclasses.replace(rec.config, rerank_diversity=diversity)

    def rerank(self, req: RerankRequest) -> RerankResponse:
        """At most `n` items, never a seen one; ids the model does not know are dropped."""
        rec = self.model.rec
        seen = set(req.seen)
        items = [
            it
            for it in dict((it["item_id"], it) for it in reversed(req.items)).values()
            if it["item_id"] not in seen
        ][::-1]  # de-duplicated (first wins), seen removed
        idx = self.model.index([it["item_id"] for it in items])
        keep = [k for k in range(len(items)) if idx[k] >= 0]
        new = [items[k] for k in range(len(items)) if idx[k] < 0][: min(FRESH_SLOTS, req.n)]
        picked: list[RerankedItem] = []
        if keep:
            merged = _merged(self.model, idx[keep], [items[k]["channel"] for k in keep])
            scores = np.array([items[k]["score"] for k in keep], dtype=np.float64)
            picked = [
                RerankedItem(item_id=r.item_id, score=r.score, channel=r.channel, reasons=list(r.reasons))
                for r in rec.rerank(
                    rec.query(req.user_id),
                    merged,
                    scores,
                    req.n - len(new),
                    seen=self.model.known(req.seen).tolist(),
                )
            ]
        # Items newer than the model: the last slot(s), so the catalogue's news gets seen.
        picked += [
            RerankedItem(
                item_id=it["item_id"],
                score=0.0,
                channel=it["channel"],
                reasons=[f"found by {it['channel']}", "new item, not in the model yet (fresh slot)"],
            )
            for it in new
        ]
        return RerankResponse(items=picked)


class UserStage:
    """The user's profile: real-time state (KV) over the training history (bundle)."""

    def __init__(self, model: ServingModel, kv: KVStore) -> None:
        self.model = model
        self.kv = kv

    def profile(self, user_id: str) -> dict[str, Any]:
        """The contract's UserProfile plus `history` statistics."""
        rec = self.model.rec
        state = _read_user(self.kv, user_id)  # one round trip: recent, seen, categories
        user = rec.data.user_index.get(user_id)
        trained: list[str] = []
        stats: dict[str, Any] = {
            "trained_interactions": 0,
            "realtime_recent": len(state.recent_items),
            "realtime_seen": len(state.seen_items),
        }
        affinity = dict(state.category_affinity)
        if user is not None:
            items, times = rec.data.history(user)
            order = np.argsort(-times, kind="stable")
            trained = [str(rec.data.item_ids[i]) for i in items[order]]
            for i in items.tolist():
                for c in rec.data.item_categories[i]:
                    affinity[c] = affinity.get(c, 0.0) + 1.0
            stats.update(
                trained_interactions=len(items), first_ts=_iso(times.min()), last_ts=_iso(times.max())
            )
        profile = UserProfile(
            user_id=user_id,
            recent_items=list(dict.fromkeys([*state.recent_items, *trained]))[:RECENT_MAX],
            seen_items=list(dict.fromkeys([*state.seen_items, *trained]))[:SEEN_MAX],
            category_affinity=dict(sorted(affinity.items(), key=lambda kv: -kv[1])),
            attributes={"known": user is not None},
            is_new=user is None and state.is_new,
        )
        return {**profile.model_dump(), "history": stats}


class ItemStage:
    """Item metadata: the KV (catalogue updates) over the bundle (training catalogue). Without a
    model (a cluster before its first training) the KV alone answers: a catalogue imported through
    `POST /admin/items` is there already."""

    def __init__(self, model: ServingModel | None, kv: KVStore) -> None:
        self.model = model
        self.kv = kv

    def lookup(self, item_ids: Sequence[str]) -> ItemResponse:
        """Metadata keyed by id; ids neither the KV nor the bundle knows are absent."""
        ids = list(dict.fromkeys(item_ids))
        try:
            hashes = self.kv.read(item_reads(ids))  # one pipelined round trip
        except BackendUnavailableError as exc:
            log.warning("KV unavailable, item metadata from the bundle: %s", exc)
            hashes = [{}] * len(ids)
        rec = self.model.rec if self.model is not None else None
        out: dict[str, ItemMeta] = {}
        for item_id, fields in zip(ids, hashes, strict=True):
            if fields:
                r = ItemRecord.from_hash(item_id, fields)
                out[item_id] = ItemMeta(
                    title=r.title or None,
                    categories=list(r.categories),
                    created_at=_iso(r.created_at_s),
                    attributes=dict(r.attributes),
                )
                continue
            i = rec.data.item_index.get(item_id) if rec is not None else None
            if i is not None:
                out[item_id] = ItemMeta(
                    categories=list(rec.data.item_categories[i]), created_at=_iso(rec.items.created[i])
                )
        return ItemResponse(items=out)


def _iso(ts: float) -> str | None:
    """Epoch seconds -> RFC 3339 (UTC), None for 0/unknown."""
    ts = float(ts)
    if not ts or ts != ts:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def stage_loader(
    build: Callable[[ServingModel], Any],
    settings: Settings | None = None,
    parts: ModelParts = ALL_PARTS,
    prefetched: Future[LoadedBundle] | None = None,
) -> Callable[[str], tuple[str, Any]]:
    """A ModelSlot loader: fetch + verify + build (the `parts` of) the model from the configured
    object store, then `build(model)` the function's stage. The first load of "latest" takes the
    `prefetched` bundle (`coldstart.prefetch`) when there is one; its errors are that load's."""
    s = settings or get_settings()
    store = object_store(s)
    pending = [prefetched] if prefetched is not None else []

    def load(version: str) -> tuple[str, Any]:
        try:
            if pending and version == "latest":
                model = model_from_bundle(pending.pop().result(), parts.max_users)
            else:
                model = load_model(store, s.model_name, version, s.model_cache_dir, parts)
        except NotFoundError as exc:
            if version != "latest":
                raise
            raise NotFoundError(no_model_reason(s)) from exc
        return model.version, build(model)

    return load


def model_location(settings: Settings) -> str:
    """Where the serving functions look for bundles, in words (for error messages)."""
    if settings.object_store == "s3":
        return f"bucket {settings.s3_bucket!r} at {settings.s3_endpoint}"
    return f"the local object store {settings.objects_dir}"


def no_model_reason(settings: Settings) -> str:
    """Why a serving function has no model to serve, and what brings the first one."""
    return (
        f"no bundle under models/{settings.model_name}/LATEST in {model_location(settings)} "
        "(the bucket or the model does not exist yet): run the init job (`zerorec init-cluster`) "
        "or publish a model (`zerorec train`, the model-training function); retrying"
    )


def latest_probe(settings: Settings | None = None) -> Callable[[], str]:
    """The version the configured model's LATEST points at (for ModelSlot's polling)."""
    s = settings or get_settings()
    store = object_store(s)
    return lambda: latest_version(store, s.model_name)


def stage_slot(
    build: Callable[[ServingModel], T],
    parts: ModelParts,
    settings: Settings | None = None,
    prefetched: Future[LoadedBundle] | None = None,
) -> ModelSlot[T]:
    """A serving function's model slot, loaded before it returns (the cold start: before the port
    opens): `stage_loader` (from `prefetched` first), retries while nothing loads, LATEST polling."""
    s = settings or get_settings()
    slot = ModelSlot(
        s.model_name,
        stage_loader(build, s, parts, prefetched),
        s.model_retry_s,
        latest=latest_probe(s),
        poll_s=s.model_poll_s,
    )
    slot.load()
    return slot


def default_kv(settings: Settings | None = None) -> KVStore:
    """The configured KV store (one per process)."""
    return kv_store(settings or get_settings())


class ItemAdminRequest(BaseModel):
    """item `POST /admin/items`: catalogue changes, published as item CloudEvents (zerorec.catalog)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    upsert: list[dict[str, Any]] = Field(
        default_factory=list, max_length=1000, description="item.upserted.v1 payloads (full replacement)"
    )
    delete: list[Id] = Field(default_factory=list, max_length=1000, description="item ids to delete")
    reason: str | None = Field(default=None, max_length=256, description="why the items were deleted")


class ItemAdmin:
    """Produces catalogue changes to the items topic; the consumer applies them to the KV."""

    def __init__(self, bus: EventBus, topic: str) -> None:
        self.bus = bus
        self.topic = topic

    def apply(self, req: ItemAdminRequest) -> dict[str, Any]:
        """Publish the upserts then the deletes; per-entry rejections are reported, not raised."""
        from zerorec.catalog import publish_deletes, publish_upserts  # jsonschema: admin path only

        out: dict[str, Any] = {}
        if req.upsert:
            out["upserted"] = publish_upserts(self.bus, self.topic, req.upsert).to_json()
        if req.delete:
            out["deleted"] = publish_deletes(self.bus, self.topic, req.delete, reason=req.reason).to_json()
        return out
