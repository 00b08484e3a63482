"""Merge channel answers: per-channel quotas, de-duplication, provenance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from zerorec.recall.base import Candidates


@dataclass
class MergedCandidates:
    """Unique items in merge order; ``channel`` is the channel that contributed each item first and
    ``channel_scores`` [M, C] holds every channel's score for it (NaN: not returned by that channel)."""

    items: np.ndarray
    channel: list[str]
    channel_names: list[str]
    channel_scores: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def found_by(self, item_position: int) -> list[str]:
        row = self.channel_scores[item_position]
        return [c for c, s in zip(self.channel_names, row, strict=True) if np.isfinite(s)]


def merge(
    answers: Sequence[Candidates], quotas: Mapping[str, int] | None = None, limit: int | None = None
) -> MergedCandidates:
    """Interleave channels rank by rank, each up to its quota (default: all it returned).

    An item already taken is not taken again (it does not use up the later channel's quota), but
    every channel's score for it is kept as provenance. ``limit`` caps the merged length.
    """
    names = [a.channel for a in answers]
    col = {n: i for i, n in enumerate(names)}
    lists = [a.items.tolist() for a in answers]  # plain ints: the interleave is a Python loop
    caps = [min(len(a), (quotas or {}).get(a.channel, len(a))) for a in answers]
    taken: set[int] = set()
    order: list[int] = []
    primary: list[str] = []
    used = [0] * len(answers)
    cursor = [0] * len(answers)
    max_total = limit if limit is not None else sum(caps)
    active = [c for c in range(len(answers)) if caps[c] > 0 and lists[c]]
    while len(order) < max_total and active:
        for c in active:  # one round: each channel still open takes its next new item
            items, cur, end = lists[c], cursor[c], len(lists[c])
            while cur < end:
                item = items[cur]
                cur += 1
                if item not in taken:
                    taken.add(item)
                    order.append(item)
                    primary.append(names[c])
                    used[c] += 1
                    break
            cursor[c] = cur
            if len(order) >= max_total:
                break
        active = [c for c in active if used[c] < caps[c] and cursor[c] < len(lists[c])]
    merged = np.array(order, dtype=np.int64)
    scores = np.full((len(order), len(names)), np.nan, dtype=np.float32)
    if len(merged):
        sorter = np.argsort(merged, kind="stable")
        for ans in answers:
            items_arr = np.asarray(ans.items, dtype=np.int64)
            at = np.minimum(np.searchsorted(merged, items_arr, sorter=sorter), len(merged) - 1)
            hit = merged[sorter[at]] == items_arr
            scores[sorter[at[hit]], col[ans.channel]] = np.asarray(ans.scores)[hit]
    return MergedCandidates(merged, primary, names, scores)


def fill(merged: MergedCandidates, deep: Sequence[Candidates], limit: int) -> MergedCandidates:
    """`merged` topped up to `limit` items from the channels' deeper lists (``deep``, best first).

    When quotas overlap, de-duplication leaves fewer items than asked for; this takes, rank by rank
    over the channels, each channel's next-best item not taken yet. What `merged` holds keeps its
    order; a channel's scores are kept as provenance for everything in the part of its deep list it
    went through. Channels of ``deep`` must be among ``merged.channel_names``.
    """
    order = merged.items.tolist()
    if len(order) >= limit:
        return merged
    primary = list(merged.channel)
    taken = set(order)
    lists = [d.items.tolist() for d in deep]
    cursor = [0] * len(deep)
    active = [c for c in range(len(deep)) if lists[c]]
    while len(order) < limit and active:
        for c in active:
            items, cur, end = lists[c], cursor[c], len(lists[c])
            while cur < end:
                item = items[cur]
                cur += 1
                if item not in taken:
                    taken.add(item)
                    order.append(item)
                    primary.append(deep[c].channel)
                    break
            cursor[c] = cur
            if len(order) >= limit:
                break
        active = [c for c in active if cursor[c] < len(lists[c])]
    names = merged.channel_names
    col = {n: i for i, n in enumerate(names)}
    scores = np.full((len(order), len(names)), np.nan, dtype=np.float32)
    scores[: len(merged)] = merged.channel_scores
    at = {item: k for k, item in enumerate(order)}
    for c, ans in enumerate(deep):
        j = col[ans.channel]
        consumed = np.asarray(ans.scores)[: cursor[c]].tolist()
        for item, score in zip(lists[c][: cursor[c]], consumed, strict=True):
            k = at.get(item)
            if k is not None and scores[k, j] != scores[k, j]:  # NaN: not yet provenance
                scores[k, j] = score
    return MergedCandidates(np.array(order, dtype=np.int64), primary, list(names), scores)
