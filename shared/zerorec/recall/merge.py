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
    caps = [min(len(a), (quotas or {}).get(a.channel, len(a))) for a in answers]
    taken: dict[int, int] = {}
    order: list[int] = []
    primary: list[str] = []
    used = [0] * len(answers)
    cursor = [0] * len(answers)
    max_total = limit if limit is not None else sum(caps)
    while len(order) < max_total and any(
        used[c] < caps[c] and cursor[c] < len(answers[c]) for c in range(len(answers))
    ):
        for c, ans in enumerate(answers):
            while used[c] < caps[c] and cursor[c] < len(ans):
                item = int(ans.items[cursor[c]])
                cursor[c] += 1
                if item in taken:
                    continue
                taken[item] = len(order)
                order.append(item)
                primary.append(ans.channel)
                used[c] += 1
                break
            if len(order) >= max_total:
                break
    scores = np.full((len(order), len(names)), np.nan, dtype=np.float32)
    for ans in answers:
        for item, s in zip(ans.items.tolist(), ans.scores.tolist(), strict=True):
            pos = taken.get(item)
            if pos is not None:
                scores[pos, col[ans.channel]] = s
    return MergedCandidates(np.array(order, dtype=np.int64), primary, names, scores)
