"""Reranking: seen-item filter, freshness boost, per-category cap and MMR diversity (pure, no I/O).

Steps, each explained in the output's `reasons`:
1. drop items the user has seen (and duplicate ids, keeping the first);
2. relevance = min-max normalised score in [0, 1], plus a freshness boost
   `freshness_weight * 0.5 ** (age_days / freshness_half_life_days)` when `created_at` is known;
3. greedy MMR: pick argmax of `(1 - diversity) * relevance - diversity * max_sim(selected)`,
   skipping items whose category already holds `max_per_category` picks. Similarity is the cosine of
   item embeddings when given (clipped to [0, 1]), else the Jaccard overlap of categories.
Ties always go to the earlier input position, so the result is stable and deterministic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from zerorec.errors import InvalidInputError

_DAY_S = 86400.0


class Candidate(NamedTuple):
    """A scored item from recall or ranking; plain `(item_id, score, channel)` tuples work too."""

    item_id: Hashable
    score: float
    channel: str


@dataclass(frozen=True)
class RerankConfig:
    """Rerank rules; `diversity` is the MMR trade-off (0 = pure relevance, 1 = pure novelty)."""

    diversity: float = 0.3
    freshness_weight: float = 0.1
    freshness_half_life_days: float = 30.0
    max_per_category: int | None = None
    filter_seen: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.diversity <= 1.0:
            raise InvalidInputError(f"diversity must be in [0, 1], got {self.diversity}")
        if not math.isfinite(self.freshness_weight) or self.freshness_weight < 0:
            raise InvalidInputError(f"freshness_weight must be >= 0, got {self.freshness_weight}")
        if not self.freshness_half_life_days > 0:
            raise InvalidInputError(
                f"freshness_half_life_days must be > 0, got {self.freshness_half_life_days}"
            )
        if self.max_per_category is not None and self.max_per_category < 1:
            raise InvalidInputError(f"max_per_category must be >= 1 or None, got {self.max_per_category}")


@dataclass(frozen=True)
class RerankedItem:
    """One output item: `score` is its MMR value when picked; `position` its index in the input."""

    item_id: Hashable
    score: float
    channel: str
    position: int
    original_score: float
    reasons: tuple[str, ...]


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, np.datetime64):
        return float(value.astype("datetime64[us]").astype(np.int64)) / 1e6
    try:
        ts = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"created_at {value!r} is not a timestamp") from exc
    return ts if math.isfinite(ts) else None


def _moved(count: int, why: str) -> str | None:
    if count == 0:
        return None
    return f"moved {'up' if count > 0 else 'down'} {abs(count)} {why}"


def rerank(
    candidates: Sequence[Candidate | tuple[Hashable, float, str]],
    n: int,
    config: RerankConfig = RerankConfig(),
    *,
    categories: Mapping[Hashable, Iterable[str]] | None = None,
    embeddings: np.ndarray | Mapping[Hashable, np.ndarray] | None = None,
    created_at: Mapping[Hashable, Any] | None = None,
    seen: Iterable[Hashable] | None = None,
    now: float | datetime | None = None,
) -> list[RerankedItem]:
    """Pick the top `n` of `candidates` under `config`; returns at most `n` items with reasons.

    `embeddings` is either an array aligned with `candidates` ([M, d]) or a mapping item_id -> vector.
    `created_at` values are epoch seconds or datetimes (naive = UTC); `now` defaults to the wall clock.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise InvalidInputError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(embeddings, np.ndarray) and (embeddings.ndim != 2 or len(embeddings) != len(candidates)):
        raise InvalidInputError(
            f"embeddings array must be [len(candidates)={len(candidates)}, d], got {embeddings.shape}"
        )
    seen_set = set(seen) if (seen is not None and config.filter_seen) else set()

    # 1. Seen filter and de-duplication (the first occurrence of an id wins).
    try:
        columns = list(zip(*candidates, strict=True)) if len(candidates) else [(), (), ()]
        all_ids, all_scores, all_channels = columns
        all_raw = np.asarray(all_scores, dtype=np.float64)
        if len(set(all_ids)) == len(all_ids):  # common case: no duplicates, C-speed filter
            keep = [p for p, item_id in enumerate(all_ids) if item_id not in seen_set]
        else:
            keep, taken = [], set()
            for pos, item_id in enumerate(all_ids):
                if item_id not in taken and item_id not in seen_set:
                    taken.add(item_id)
                    keep.append(pos)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"candidates must be (item_id, score, channel), ids hashable: {exc}") from exc
    if not np.isfinite(all_raw).all():
        bad = int(np.flatnonzero(~np.isfinite(all_raw))[0])
        raise InvalidInputError(f"candidate {bad} ({all_ids[bad]!r}) has a non-finite score")
    m = len(keep)
    if n == 0 or m == 0:
        return []
    n = min(int(n), m)
    ids = [all_ids[p] for p in keep]
    channels = [str(all_channels[p]) for p in keep]
    raw = all_raw[keep]

    # 2. Relevance in [0, 1] plus freshness.
    span = raw.max() - raw.min()
    rel = (raw - raw.min()) / span if span > 0 else np.ones(m)
    boost = np.zeros(m)
    if created_at and config.freshness_weight > 0:
        now_s = _timestamp(now) if now is not None else time.time()
        if now_s is None:
            raise InvalidInputError(f"now {now!r} is not a finite timestamp")
        values = [created_at.get(item_id, np.nan) for item_id in ids]
        try:  # fast path: epoch seconds
            stamps = np.array(values, dtype=np.float64)
        except (TypeError, ValueError):
            stamps = np.array(
                [np.nan if (s := _timestamp(v)) is None else s for v in values], dtype=np.float64
            )
        known = np.isfinite(stamps)
        age_days = np.maximum(0.0, now_s - np.where(known, stamps, now_s)) / _DAY_S
        decay = config.freshness_weight * np.power(0.5, age_days / config.freshness_half_life_days)
        boost = np.where(known, decay, 0.0)
    adj = rel + boost
    base_rank = _ranks(raw)  # pure relevance order (stable)
    fresh_rank = _ranks(adj)

    # Categories as a multi-hot matrix (for the cap and for Jaccard similarity).
    need_cats = config.max_per_category is not None or (config.diversity > 0 and embeddings is None)
    item_cats = [categories.get(item_id) or () for item_id in ids] if categories and need_cats else []
    flat = list(chain.from_iterable(item_cats))
    vocab = dict.fromkeys(flat)
    cat_names = [str(c) for c in vocab]
    multi_hot = np.zeros((m, len(vocab)), dtype=np.float64)
    if flat:
        code = {c: k for k, c in enumerate(vocab)}
        rows = np.repeat(np.arange(m), [len(cs) for cs in item_cats])
        multi_hot[rows, [code[c] for c in flat]] = 1.0

    sim_of = _similarity(ids, keep, embeddings, multi_hot) if config.diversity > 0 else None

    # 3. Greedy MMR with the category cap.
    lam = config.diversity
    cap = config.max_per_category
    max_sim = np.zeros(m)
    base = (1.0 - lam) * adj
    closed = np.zeros(m)  # -inf once an item is picked or capped
    cat_count = np.zeros(len(vocab), dtype=np.float64)
    blocked_at = np.full(m, -1, dtype=np.int64)  # step at which the cap blocked an item
    blocked_col = np.zeros(m, dtype=np.int64)  # ... and by which category
    picks: list[tuple[int, float]] = []
    for step in range(n):
        value = base - lam * max_sim if sim_of is not None else base
        value = value + closed
        j = int(np.argmax(value))  # first maximum = earliest input position
        if closed[j] < 0:
            break  # everything left is capped
        picks.append((j, float(value[j])))
        closed[j] = -np.inf
        if sim_of is not None:
            np.maximum(max_sim, sim_of(j), out=max_sim)
        if cap is not None and len(vocab):
            cat_count += multi_hot[j]
            for col in np.flatnonzero((multi_hot[j] > 0) & (cat_count >= cap)):
                newly = np.flatnonzero((closed == 0) & (multi_hot[:, col] > 0))
                blocked_at[newly] = step
                blocked_col[newly] = col
                closed[newly] = -np.inf

    # Explanations: rank changes per stage (0-based ranks among the kept candidates).
    out: list[RerankedItem] = []
    blocked_idx = np.flatnonzero(blocked_at >= 0)
    blocked_step, blocked_rank = blocked_at[blocked_idx], fresh_rank[blocked_idx]
    for step, (j, value) in enumerate(picks):
        reasons = [f"found by {channels[j]}"]
        fresh = _moved(int(base_rank[j] - fresh_rank[j]), "by freshness")
        if fresh:
            reasons.append(fresh)
        skipped = (
            blocked_idx[(blocked_step < step) & (blocked_rank < fresh_rank[j])] if len(blocked_idx) else ()
        )
        if len(skipped):
            capped = sorted({cat_names[c] for c in blocked_col[skipped]})
            reasons.append(f"moved up {len(skipped)}: capped category {', '.join(capped)}")
        diverse = _moved(int(fresh_rank[j] - len(skipped) - step), "for diversity")
        if diverse:
            reasons.append(diverse)
        out.append(
            RerankedItem(
                item_id=ids[j],
                score=value,
                channel=channels[j],
                position=keep[j],
                original_score=float(raw[j]),
                reasons=tuple(reasons),
            )
        )
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based rank of each value in descending order, ties by position."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(len(values))
    return ranks


def _similarity(
    ids: list[Hashable],
    keep: list[int],
    embeddings: np.ndarray | Mapping[Hashable, np.ndarray] | None,
    multi_hot: np.ndarray,
) -> Any:
    """A function j -> similarity of every kept item to item j, in [0, 1]."""
    if embeddings is not None and len(ids):
        if isinstance(embeddings, np.ndarray):
            emb = np.asarray(embeddings, dtype=np.float64)[keep]
        else:
            dim = next((len(np.asarray(v).ravel()) for v in embeddings.values()), 0)
            emb = np.zeros((len(ids), dim))
            for j, item_id in enumerate(ids):
                vec = embeddings.get(item_id)
                if vec is not None:
                    vec = np.asarray(vec, dtype=np.float64).ravel()
                    if vec.shape != (dim,):
                        raise InvalidInputError(
                            f"embedding of {item_id!r} has shape {vec.shape}, want ({dim},)"
                        )
                    emb[j] = vec
        if not np.isfinite(emb).all():
            raise InvalidInputError("embeddings contain NaN or infinite values")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
        return lambda j: np.maximum(unit @ unit[j], 0.0)  # cosine <= 1 already
    if multi_hot.shape[1] == 0:
        return None
    sizes = multi_hot.sum(axis=1)

    def jaccard(j: int) -> np.ndarray:
        inter = multi_hot @ multi_hot[j]
        union = sizes + sizes[j] - inter
        return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

    return jaccard
