"""Candidate batches in columns: the numpy side of the internal hop contract (docs/HOPS.md).

Recall, ranking, reranking and the BFF pass candidates as `zerorec.api.CandidateColumns`: parallel
arrays (ids, scores, channel codes, found masks) and recall's ranking signals as one base64 block of
float32. `CandidateBatch` is that batch as numpy arrays. Every step here is whole-array work (numpy,
or `map` over a C callable): no Python object and no bytecode loop per candidate.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from zerorec.api import CandidateColumns
from zerorec.errors import InvalidInputError
from zerorec.recall.merge import MergedCandidates


class BatchError(InvalidInputError):
    """A batch whose arrays do not fit together (a 422 with this reason at a function)."""


@dataclass(frozen=True)
class CandidateBatch:
    """Candidates as columns; `signals` float32 [M, C, 2] over `channels` (NaN: none), or None."""

    item_ids: list[str]
    scores: np.ndarray  # float64 [M]
    channel: np.ndarray  # int64 [M], codes into `channels`
    channels: tuple[str, ...]
    found: np.ndarray  # int64 [M], bit k: channel k returned the item
    signals: np.ndarray | None = None
    model_version: str | None = None
    demote: np.ndarray | None = None  # float64 [M]: factors in (0, 1] applied after ranking

    def __len__(self) -> int:
        return len(self.item_ids)

    # ------------------------------------------------------------------ wire

    @classmethod
    def from_columns(cls, cols: CandidateColumns, *, decode_signals: bool = True) -> CandidateBatch:
        """The validated wire model as arrays; BatchError when `signals` is not base64.
        `decode_signals=False`: leave them out (the BFF passes them on undecoded)."""
        m, c = len(cols.item_ids), len(cols.channels)
        signals = None
        if cols.signals and decode_signals:
            try:
                raw = base64.b64decode(cols.signals, validate=True)
            except (binascii.Error, ValueError):
                raise BatchError("candidates.signals is not base64") from None
            if len(raw) != m * c * 8:
                raise BatchError(f"candidates.signals must hold float32 [{m}, {c}, 2], got {len(raw)} bytes")
            signals = clean_signals(np.frombuffer(raw, dtype="<f4").reshape(m, c, 2))
        return cls(
            list(cols.item_ids),
            np.asarray(cols.scores, dtype=np.float64).reshape(m),
            np.asarray(cols.channel, dtype=np.int64).reshape(m),
            tuple(cols.channels),
            np.asarray(cols.found, dtype=np.int64).reshape(m) if cols.found else np.zeros(m, np.int64),
            signals,
            cols.model_version,
            np.asarray(cols.demote, dtype=np.float64).reshape(m) if cols.demote else None,
        )

    def to_wire(self, *, with_signals: bool = True) -> dict[str, Any]:
        """CandidateColumns as plain data (numpy arrays inside: encode with orjson's
        OPT_SERIALIZE_NUMPY, as `zerorec.serving.json_response` does)."""
        out: dict[str, Any] = {
            "item_ids": self.item_ids,
            "scores": self.scores,
            "channel": self.channel,
            "channels": list(self.channels),
            "found": self.found,
        }
        if with_signals and self.signals is not None:
            out["signals"] = encode_signals(self.signals)
        if self.model_version is not None:
            out["model_version"] = self.model_version
        if self.demote is not None:
            out["demote"] = self.demote
        return out

    # ------------------------------------------------------------------ columns

    def take(self, rows: np.ndarray) -> CandidateBatch:
        """The batch restricted to `rows` (indices or a boolean mask), in that order."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows, dtype=np.int64)
        return CandidateBatch(
            pick(self.item_ids, rows),
            self.scores[rows],
            self.channel[rows],
            self.channels,
            self.found[rows],
            None if self.signals is None else self.signals[rows],
            self.model_version,
            None if self.demote is None else self.demote[rows],
        )

    def channel_names(self) -> list[str]:
        """Each candidate's channel name."""
        return np.asarray(self.channels, dtype=object)[self.channel].tolist()

    def found_in(self, order: Sequence[str]) -> np.ndarray:
        """bool [M, len(order)]: which of the channels `order` returned each candidate."""
        bits = np.array([_bit(self.channels, c) for c in order], dtype=np.int64)
        return (self.found[:, None] & bits[None, :]) != 0

    def signals_in(self, order: Sequence[str]) -> np.ndarray:
        """float64 [M, len(order), 2]: the signals of the channels `order` (NaN where none)."""
        out = np.full((len(self), len(order), 2), np.nan)
        if self.signals is None:
            return out
        pos = {c: k for k, c in enumerate(self.channels)}
        dst = [j for j, c in enumerate(order) if c in pos]
        out[:, dst] = self.signals[:, [pos[order[j]] for j in dst]]
        return out


def _bit(channels: Sequence[str], name: str) -> int:
    return 1 << channels.index(name) if name in channels else 0


def pick(values: Sequence[Any], rows: np.ndarray) -> list[Any]:
    """`[values[r] for r in rows]` with the loop in C."""
    if len(rows) == 0:
        return []
    got = itemgetter(*rows.tolist())(values)
    return [got] if len(rows) == 1 else list(got)


def clean_signals(values: np.ndarray) -> np.ndarray:
    """float32 [M, C, 2] with what the ranker must not read as a signal made NaN ("absent"):
    non-finite values and negative ranks."""
    out = np.array(values, dtype=np.float32)
    bad = ~np.isfinite(out) | (out[..., 1:2] < 0)  # a negative rank voids the pair, as does NaN
    out[bad] = np.nan
    return out


def encode_signals(signals: np.ndarray) -> str:
    """float32 [M, C, 2] as base64 of little-endian float32 (exact: channels score in float32)."""
    return base64.b64encode(np.ascontiguousarray(signals, dtype="<f4").tobytes()).decode("ascii")


def found_mask(finite: np.ndarray, columns: Sequence[str], channels: Sequence[str]) -> np.ndarray:
    """int64 [M] bitmasks over `channels` from `finite` bool [M, len(columns)] (columns by name)."""
    weights = np.array([_bit(channels, c) for c in columns], dtype=np.int64)
    return finite.astype(np.int64) @ weights if len(columns) else np.zeros(len(finite), np.int64)


def demoted(scores: np.ndarray, factors: np.ndarray | None) -> np.ndarray:
    """`feedback.demoted_score` over arrays: each score pushed down by its factor in (0, 1) (scaled
    towards 0 when positive, away when negative); a factor of 1 (or none) leaves it."""
    if factors is None:
        return scores
    active = (factors > 0) & (factors < 1)
    pushed = np.where(scores >= 0, scores * factors, scores / np.maximum(factors, 1e-6))
    return np.where(active, pushed, scores)


def first_occurrences(ids: Sequence[str]) -> np.ndarray:
    """bool [M]: True at the first occurrence of each id (all True when the ids are distinct)."""
    keep = np.ones(len(ids), dtype=bool)
    if len(set(ids)) != len(ids):
        _, first = np.unique(np.asarray(ids, dtype=object).astype(str), return_index=True)
        keep[:] = False
        keep[first] = True
    return keep


def member_of(ids: Sequence[str], values: set[str] | frozenset[str]) -> np.ndarray:
    """bool [M]: which ids are in `values` (a set lookup per id, looped in C)."""
    if not values:
        return np.zeros(len(ids), dtype=bool)
    return np.fromiter(map(values.__contains__, ids), dtype=bool, count=len(ids))


def recall_batch(
    item_ids: np.ndarray,
    merged: MergedCandidates,
    signals: np.ndarray,
    channels: Sequence[str],
    model_version: str,
    extra_ids: Sequence[str] = (),
    extra_channel: str = "fresh",
) -> CandidateBatch:
    """Recall's answer: the merged candidates (`item_ids` the model's vocabulary, `signals` their
    `features.channel_signals` [M, len(channels), 2]); `score` is the merge order (1 = first).
    `extra_ids` (items newer than the model) follow with score 0, channel `extra_channel`, no
    signals and no found bits."""
    names = list(dict.fromkeys([*channels, *dict.fromkeys(merged.channel), extra_channel]))
    m, extra = len(merged), len(extra_ids)
    code = {c: k for k, c in enumerate(names)}
    codes = np.full(m + extra, code[extra_channel], dtype=np.int64)
    codes[:m] = np.fromiter(map(code.__getitem__, merged.channel), np.int64, count=m)
    found = np.zeros(m + extra, dtype=np.int64)
    found[:m] = found_mask(np.isfinite(merged.channel_scores), merged.channel_names, names)
    sig = np.full((m + extra, len(names), 2), np.nan, dtype=np.float32)
    sig[:m, : len(channels)] = signals
    scores = np.zeros(m + extra)
    scores[:m] = (m - np.arange(m)) / max(m, 1)
    return CandidateBatch(
        item_ids[merged.items].tolist() + list(extra_ids),
        scores,
        codes,
        tuple(names),
        found,
        clean_signals(sig),
        model_version,
    )
