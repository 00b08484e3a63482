"""The one recall-channel interface every channel honours (after implicit's RecommenderBase).

A channel is fitted on ``InteractionData``; it answers its top-n for one user query from a structure
built at training time (``recall``: neighbour lists, a faiss index, precomputed lists), scores a
given set of items (``score_items``: the ranker's signals of the candidates) and round-trips through
a dict of safe files (``to_files`` / ``from_files``: npy, npz, json, faiss; never pickle).
``score`` scores the whole catalogue: the brute-force reference of the other two, for tests and
offline analysis; serving never calls it. Items are indices into the shared item vocabulary.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from zerorec.bundle import npy_view
from zerorec.data.interactions import InteractionData
from zerorec.errors import IntegrityError

if TYPE_CHECKING:  # channels load scipy when they are built (data-only functions never do)
    import scipy.sparse as sp


@dataclass
class UserQuery:
    """What a channel needs to answer one user: history (oldest first) and a reference time.

    ``user`` is the user's index in the fitted data, or None for an unknown/cold-start user.
    ``now`` defaults to the last history time (or the newest training time for empty history).
    """

    user: int | None = None
    history: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    now: float | None = None
    categories: dict[str, float] = field(default_factory=dict)
    # per-request results a channel computes once for both `recall` and `score_items`
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_data(cls, data: InteractionData, user: int, now: float | None = None) -> UserQuery:
        items, times = data.history(user)
        return cls(user=user, history=items, times=times, now=now)

    def reference_time(self, default: float) -> float:
        if self.now is not None:
            return float(self.now)
        return float(self.times.max()) if len(self.times) else default


@dataclass
class Candidates:
    """A channel's answer: item indices, best first, with scores, tagged with the channel name."""

    items: np.ndarray
    scores: np.ndarray
    channel: str

    def __len__(self) -> int:
        return len(self.items)


def top_n(scores: np.ndarray, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the n highest finite scores, best first; ties broken by lower index."""
    s = np.asarray(scores, dtype=np.float64).copy()
    if exclude is not None and len(exclude):
        s[exclude] = -np.inf
    finite = np.flatnonzero(np.isfinite(s))
    if len(finite) == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    n = min(n, len(finite))
    vals = s[finite]
    part = np.argpartition(-vals, n - 1)[:n] if n < len(finite) else np.arange(len(finite))
    chosen = finite[part]
    return chosen[np.lexsort((chosen, -s[chosen]))].astype(np.int64)


class RecallChannel(ABC):
    """fit / score / recall / to_files / from_files: the same five calls for every channel."""

    name: ClassVar[str]
    n_items: int = 0
    default_now: float = 0.0

    @abstractmethod
    def fit(self, data: InteractionData) -> Self:
        """Learn from the interactions; returns self."""

    @abstractmethod
    def score(self, query: UserQuery) -> np.ndarray:
        """Float32 scores over the whole catalogue (-inf: the channel has nothing to say): the
        brute-force reference of `recall` and `score_items` (tests, offline analysis)."""

    def recall(self, query: UserQuery, n: int, exclude: np.ndarray | None = None) -> Candidates:
        """The channel's top-n candidates for the user, never a history or excluded item.

        This default scans `score` (the whole catalogue); every built-in channel answers from its
        index instead, with the same items (exact indexes) or most of them (approximate ones)."""
        scores = self.score(query)
        skip = query.history if exclude is None else np.concatenate([query.history, exclude])
        items = top_n(scores, n, skip.astype(np.int64))
        return Candidates(items, scores[items].astype(np.float32), self.name)

    def score_items(self, query: UserQuery, items: np.ndarray) -> np.ndarray:
        """Float32 scores of ``items`` alone, equal to ``score(query)[items]`` (-inf: nothing to
        say). This default slices `score`; the built-in channels compute the few items only."""
        return self.score(query)[np.asarray(items, dtype=np.int64)].astype(np.float32)

    def widen(self) -> None:  # noqa: B027 (a no-op default, not an abstract method)
        """Expand weights `from_state` kept in their compact stored form (nothing, by default)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Hyper-parameters, JSON-serialisable."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray | sp.csr_matrix | bytes]:
        """Learned state: numpy arrays (npy), sparse matrices (npz) or raw bytes (faiss)."""

    @classmethod
    @abstractmethod
    def from_state(cls, params: dict[str, Any], arrays: dict[str, Any]) -> Self:
        """Rebuild a fitted channel from ``params`` and ``arrays``."""

    def to_files(self) -> dict[str, bytes]:
        """Safe files: params.json plus one .npy/.npz/.faiss per learned array."""
        import scipy.sparse as sp

        meta = {
            "channel": self.name,
            "n_items": self.n_items,
            "default_now": self.default_now,
            "params": self.params(),
        }
        files = {"params.json": json.dumps(meta, sort_keys=True).encode()}
        for key, value in self.arrays().items():
            if isinstance(value, bytes):
                files[f"{key}.faiss"] = value
            elif sp.issparse(value):
                buf = io.BytesIO()
                sp.save_npz(buf, sp.csr_matrix(value), compressed=False)
                files[f"{key}.npz"] = buf.getvalue()
            else:
                buf = io.BytesIO()
                np.save(buf, np.asarray(value), allow_pickle=False)
                files[f"{key}.npy"] = buf.getvalue()
        return files

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> Self:
        """Inverse of to_files; refuses a bundle written for another channel."""
        import scipy.sparse as sp

        try:
            meta = json.loads(files["params.json"])
        except (KeyError, ValueError) as exc:
            raise IntegrityError(f"{cls.name}: params.json missing or malformed") from exc
        if meta.get("channel") != cls.name:
            raise IntegrityError(f"files are for channel {meta.get('channel')!r}, not {cls.name!r}")
        arrays: dict[str, Any] = {}
        for fname, data in files.items():
            stem, _, ext = fname.rpartition(".")
            if ext == "npy":
                arrays[stem] = npy_view(data)  # read-only, no copy
            elif ext == "npz":
                arrays[stem] = sp.load_npz(io.BytesIO(data)).tocsr()
            elif ext == "faiss":
                arrays[stem] = data
        channel = cls.from_state(meta["params"], arrays)
        channel.n_items = int(meta["n_items"])
        channel.default_now = float(meta["default_now"])
        return channel


def recency_weights(times: np.ndarray, now: float, half_life_days: float) -> np.ndarray:
    """exp2(-age/half_life) for each history timestamp (1.0 for the newest at ``now``)."""
    if half_life_days <= 0:
        return np.ones(len(times))
    age = np.maximum(now - np.asarray(times, dtype=np.float64), 0.0) / 86_400.0
    return np.exp2(-age / half_life_days)
