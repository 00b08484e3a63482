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


def _interleave(
    lists: Sequence[list[int]],
    caps: Sequence[int],
    taken: set[int],
    limit: int,
) -> tuple[list[int], list[int], list[int]]:
    """Round-robin over `lists` (best first): in each round every open list takes its next item not
    in `taken`, until `limit` items are taken; a list closes at `caps[c]` takes or at its end.

    Returns (items taken, the list each came from, how far each list was scanned).
    """
    order: list[int] = []
    owner: list[int] = []
    used = [0] * len(lists)
    cursor = [0] * len(lists)
    active = [c for c in range(len(lists)) if caps[c] > 0 and lists[c]]
    closing = False
    while len(order) < limit and active:
        for c in active:  # one round: each list still open takes its next new item
            items, cur, end = lists[c], cursor[c], len(lists[c])
            while cur < end:
                item = items[cur]
                cur += 1
                if item not in taken:
                    taken.add(item)
                    order.append(item)
                    owner.append(c)
                    used[c] += 1
                    break
            cursor[c] = cur
            if cur >= end or used[c] >= caps[c]:
                closing = True
            if len(order) >= limit:
                break
        if closing:  # rebuilt only when a list closed this round
            active = [c for c in active if used[c] < caps[c] and cursor[c] < len(lists[c])]
            closing = False
    return order, owner, cursor


def merge(
    answers: Sequence[Candidates], quotas: Mapping[str, int] | None = None, limit: int | None = None
) -> MergedCandidates:
    """Interleave channels rank by rank, each up to its quota (default: all it returned).

    An item already taken is not taken again (it does not use up the later channel's quota), but
    every channel's score for it is kept as provenance. ``limit`` caps the merged length.
    """
    names = [a.channel for a in answers]
    lists = [a.items.tolist() for a in answers]  # plain ints: the interleave is a Python loop
    caps = [min(len(a), (quotas or {}).get(a.channel, len(a))) for a in answers]
    max_total = limit if limit is not None else sum(caps)
    order, owner, _ = _interleave(lists, caps, set(), max_total)
    merged = np.array(order, dtype=np.int64)
    scores = np.full((len(order), len(names)), np.nan, dtype=np.float32)
    col = {n: i for i, n in enumerate(names)}
    sorter = np.argsort(merged, kind="stable")
    for ans in answers:
        _provenance(scores, merged, sorter, ans.items, ans.scores, col[ans.channel], keep=False)
    return MergedCandidates(merged, [names[c] for c in owner], names, scores)


def _provenance(
    scores: np.ndarray,
    merged: np.ndarray,
    sorter: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    col: int,
    keep: bool = True,
) -> None:
    """Write ``values`` (a channel's scores of ``items``, each item once) into column ``col`` of
    ``scores`` at the rows of the items that are in ``merged`` (``sorter`` sorts it); ``keep``:
    only where the cell is still NaN (no provenance yet)."""
    if not len(merged) or not len(items):
        return
    items = np.asarray(items, dtype=np.int64)
    at = np.minimum(np.searchsorted(merged, items, sorter=sorter), len(merged) - 1)
    rows = sorter[at]
    hit = merged[rows] == items
    rows, values = rows[hit], np.asarray(values)[hit]
    if keep:
        blank = np.isnan(scores[rows, col])
        rows, values = rows[blank], values[blank]
    scores[rows, col] = values


def fill(merged: MergedCandidates, deep: Sequence[Candidates], limit: int) -> MergedCandidates:
    """`merged` topped up to `limit` items from the channels' deeper lists (``deep``, best first).

    When quotas overlap, de-duplication leaves fewer items than asked for; this takes, rank by rank
    over the channels, each channel's next-best item not taken yet. What `merged` holds keeps its
    order; a channel's scores are kept as provenance for everything in the part of its deep list it
    went through. Channels of ``deep`` must be among ``merged.channel_names``.
    """
    if len(merged) >= limit:
        return merged
    lists = [d.items.tolist() for d in deep]
    taken = set(merged.items.tolist())
    new, owner, cursor = _interleave(lists, [len(x) for x in lists], taken, limit - len(merged))
    items = np.array(merged.items.tolist() + new, dtype=np.int64)
    names = merged.channel_names
    col = {n: i for i, n in enumerate(names)}
    scores = np.full((len(items), len(names)), np.nan, dtype=np.float32)
    scores[: len(merged)] = merged.channel_scores
    sorter = np.argsort(items, kind="stable")
    for c, ans in enumerate(deep):
        done = cursor[c]  # provenance for the part of the deep list the channel went through
        _provenance(scores, items, sorter, ans.items[:done], np.asarray(ans.scores)[:done], col[ans.channel])
    primary = [*merged.channel, *(deep[c].channel for c in owner)]
    return MergedCandidates(items, primary, list(names), scores)
