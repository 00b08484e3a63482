"""merge/fill against the plain step-by-step loops they replaced (same items, order, provenance)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from zerorec.recall.base import Candidates
from zerorec.recall.merge import MergedCandidates, fill, merge


def _loop(
    lists: list[list[int]], caps: list[int], order: list[int], limit: int
) -> tuple[list[int], list[int]]:
    """The reference interleave: (channel of each new item, cursor per list); extends `order`."""
    taken, owner = set(order), []
    used, cursor = [0] * len(lists), [0] * len(lists)
    active = [c for c in range(len(lists)) if caps[c] > 0 and lists[c]]
    while len(order) < limit and active:
        for c in active:
            while cursor[c] < len(lists[c]):
                item = lists[c][cursor[c]]
                cursor[c] += 1
                if item not in taken:
                    taken.add(item)
                    order.append(item)
                    owner.append(c)
                    used[c] += 1
                    break
            if len(order) >= limit:
                break
        active = [c for c in active if used[c] < caps[c] and cursor[c] < len(lists[c])]
    return owner, cursor


def ref_merge(
    answers: Sequence[Candidates], quotas: Mapping[str, int] | None = None, limit: int | None = None
) -> MergedCandidates:
    names = [a.channel for a in answers]
    col = {n: i for i, n in enumerate(names)}
    caps = [min(len(a), (quotas or {}).get(a.channel, len(a))) for a in answers]
    order: list[int] = []
    owner, _ = _loop(
        [a.items.tolist() for a in answers], caps, order, limit if limit is not None else sum(caps)
    )
    scores = np.full((len(order), len(names)), np.nan, dtype=np.float32)
    at = {item: k for k, item in enumerate(order)}
    for ans in answers:  # a later answer of the same channel overwrites
        for item, s in zip(ans.items.tolist(), np.asarray(ans.scores).tolist(), strict=True):
            if item in at:
                scores[at[item], col[ans.channel]] = s
    return MergedCandidates(np.array(order, np.int64), [names[c] for c in owner], names, scores)


def ref_fill(merged: MergedCandidates, deep: Sequence[Candidates], limit: int) -> MergedCandidates:
    if len(merged) >= limit:
        return merged
    order = merged.items.tolist()
    lists = [d.items.tolist() for d in deep]
    owner, cursor = _loop(lists, [len(x) for x in lists], order, limit)
    col = {n: i for i, n in enumerate(merged.channel_names)}
    scores = np.full((len(order), len(merged.channel_names)), np.nan, dtype=np.float32)
    scores[: len(merged)] = merged.channel_scores
    at = {item: k for k, item in enumerate(order)}
    for c, ans in enumerate(deep):
        j = col[ans.channel]
        for item, s in zip(lists[c][: cursor[c]], np.asarray(ans.scores)[: cursor[c]].tolist(), strict=True):
            if scores[at[item], j] != scores[at[item], j]:
                scores[at[item], j] = s
    primary = list(merged.channel) + [deep[c].channel for c in owner]
    return MergedCandidates(np.array(order, np.int64), primary, list(merged.channel_names), scores)


def same(a: MergedCandidates, b: MergedCandidates) -> None:
    assert a.items.dtype == b.items.dtype == np.int64
    assert a.items.tolist() == b.items.tolist()
    assert a.channel == b.channel and a.channel_names == b.channel_names
    assert a.channel_scores.dtype == b.channel_scores.dtype
    np.testing.assert_array_equal(a.channel_scores, b.channel_scores)  # NaN == NaN


def answer(rng: np.random.Generator, name: str, n_items: int, size: int) -> Candidates:
    items = rng.choice(n_items, size=min(size, n_items), replace=False).astype(np.int64)
    return Candidates(items, rng.normal(size=len(items)).astype(np.float32), name)


@pytest.mark.parametrize("seed", range(200))
def test_merge_and_fill_match_the_reference_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(5, 80))
    names = ["ease", "als", "itemcf", "vector", "hot", "fresh"][: int(rng.integers(1, 7))]
    if seed % 5 == 0:
        names = ["hot", *names]  # cold start: a boosted hot list ahead of the plain one
    answers = [answer(rng, n, n_items, int(rng.integers(0, 30))) for n in names]
    quotas = {n: int(rng.integers(0, 20)) for n in names} if seed % 2 else None
    limit = [None, int(rng.integers(0, 60))][seed % 3 != 0]
    merged = merge(answers, quotas, limit)
    same(merged, ref_merge(answers, quotas, limit))
    deep = [answer(rng, n, n_items, int(rng.integers(0, 60))) for n in dict.fromkeys(names)]
    deep = [
        Candidates(
            np.concatenate([a.items, d.items[~np.isin(d.items, a.items)]]),
            np.concatenate([a.scores, d.scores[~np.isin(d.items, a.items)]]),
            d.channel,
        )
        for a, d in zip(answers, deep, strict=False)
    ]
    for want in (0, len(merged), len(merged) + 1, int(rng.integers(0, 100)), n_items + 5):
        same(fill(merged, deep, want), ref_fill(merged, deep, want))
