"""The ranker's inputs from the feature services: Spark (`feat:*`), Flink (`rt:*`) and the request context.

One definition of every service feature, computed two ways that must agree:
- training: `EventLog.snapshot` computes them point-in-time from the training events, as of the row's
  request time ``t`` (only events at or before ``t`` count, never a later one: no leakage);
- serving: `service_feature_reads` + `snapshot_from_kv` read what feature-engineering and
  flink-realtime wrote, in ONE pipelined KV round trip (`read_service_features`).
Both give a `ServiceSnapshot`; `service_dense` and `context_sparse` turn it into DeepFM columns.
A missing feature (no key, no field, an unparsable value) takes its default below, never an error.

Feature groups (each can be switched off for an ablation: its columns then hold their defaults, so
a ranker trained that way learns nothing from the service):
- ``spark``: item events in the last 1 / 7 / 30 days, the 7-of-30-day trend, the user's events in
  30 days, the share of them deeper than a view (a conversion-style ratio), and the user's 30-day
  category affinity to the candidate's categories (share of the user's affinity);
- ``flink``: item and user events in the last minute and the last hour;
- ``context``: hour of day, weekday, device, surface (sparse fields; `zerorec.api.RankingContext`);
- ``vectors``: the vector channel (its recall quota and its signals), see `zerorec.pipeline`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from zerorec.api import CONTEXT_DEVICES, CONTEXT_SURFACES
from zerorec.realtime import (
    event_weight,
    item_features_key,
    rt_counts_from,
    rt_feature_reads,
    user_category_features_key,
    user_features_key,
)
from zerorec.storage.kv import HGetAll, HMGet, ReadOp

if TYPE_CHECKING:
    import pandas as pd

    from zerorec.storage.kv import KVStore

log = logging.getLogger(__name__)
FEATURE_GROUPS = ("spark", "flink", "context", "vectors")
DAY_S = 86_400.0
SPARK_WINDOWS_DAYS = (1, 7, 30)  # jobs.feature_engineering.job.WINDOWS_DAYS
AFFINITY_DAYS = 30  # the job's longest window: user activity and category affinity
RT_WINDOWS_S = (60, 3600)  # last minute, last hour
ITEM_COUNT_FIELDS = tuple(f"cnt_{d}d" for d in SPARK_WINDOWS_DAYS)

SPARK_DENSE = (
    "item_cnt_1d",
    "item_cnt_7d",
    "item_cnt_30d",
    "item_trend_7_30",
    "user_events_30d",
    "user_engaged_share",
    "user_category_affinity_30d",
)
FLINK_DENSE = ("item_rt_1m", "item_rt_1h", "user_rt_1m", "user_rt_1h")
SERVICE_DENSE = SPARK_DENSE + FLINK_DENSE

# The context's sparse fields: index 0 = unknown (the default), then the declared values.
DEVICES = CONTEXT_DEVICES  # declared with the API's RankingContext
SURFACES = CONTEXT_SURFACES
CONTEXT_FIELDS = ("hour", "weekday", "device", "surface")
CONTEXT_CARDINALITIES = (24 + 1, 7 + 1, len(DEVICES) + 1, len(SURFACES) + 1)


@dataclass
class ServiceSnapshot:
    """The raw service features of one request's candidates (counts, not yet transformed)."""

    item_counts: np.ndarray  # float64 [M, 3]: events in the last 1 / 7 / 30 days
    item_rt: np.ndarray  # float64 [M, 2]: events in the last minute / hour
    category_affinity: np.ndarray  # float64 [M]: share of the user's 30-day affinity in the item's categories
    user_events: float = 0.0  # the user's events in 30 days
    user_views: float = 0.0  # of them, views
    user_rt: tuple[float, float] = (0.0, 0.0)  # the user's events in the last minute / hour
    as_of: float | None = None  # the request time the values hold at (the context's default clock)

    @classmethod
    def empty(cls, m: int) -> ServiceSnapshot:
        """Every feature at its default (no service has written anything)."""
        return cls(np.zeros((m, 3)), np.zeros((m, 2)), np.zeros(m))


def service_dense(snap: ServiceSnapshot, groups: Sequence[str] = FEATURE_GROUPS) -> np.ndarray:
    """float32 [M, len(SERVICE_DENSE)]; the columns of a group not in ``groups`` hold defaults (0)."""
    m = len(snap.category_affinity)
    out = np.zeros((m, len(SERVICE_DENSE)), np.float64)
    if "spark" in groups:
        cnt = np.maximum(snap.item_counts, 0.0)
        out[:, 0:3] = np.log1p(cnt)
        out[:, 3] = np.log((cnt[:, 1] + 1.0) / (cnt[:, 2] + 1.0))  # <= 0; 0 = no trend or unknown
        out[:, 4] = math.log1p(max(snap.user_events, 0.0))
        out[:, 5] = 1.0 - snap.user_views / snap.user_events if snap.user_events > 0 else 0.0
        out[:, 6] = snap.category_affinity
    if "flink" in groups:
        out[:, 7:9] = np.log1p(np.maximum(snap.item_rt, 0.0))
        out[:, 9] = math.log1p(max(snap.user_rt[0], 0.0))
        out[:, 10] = math.log1p(max(snap.user_rt[1], 0.0))
    return out.astype(np.float32)


def context_indices(
    context: Mapping[str, Any] | None, now: float, groups: Sequence[str] = FEATURE_GROUPS
) -> np.ndarray:
    """int64 [4]: hour, weekday, device, surface as sparse indices (0 = unknown or switched off).

    Hour and weekday come from the context when given, else from ``now`` (UTC, Monday = 0); an
    unknown device or surface, or a value of the wrong type, is index 0, never an error."""
    if "context" not in groups:
        return np.zeros(len(CONTEXT_FIELDS), np.int64)
    ctx = context or {}
    when = datetime.fromtimestamp(now, UTC) if math.isfinite(now) else None
    hour = _int_in(ctx.get("hour"), 0, 23, when.hour if when else None)
    weekday = _int_in(ctx.get("weekday"), 0, 6, when.weekday() if when else None)
    device, surface = ctx.get("device"), ctx.get("surface")
    return np.array(
        [
            0 if hour is None else hour + 1,
            0 if weekday is None else weekday + 1,
            DEVICES.index(device) + 1 if device in DEVICES else 0,
            SURFACES.index(surface) + 1 if surface in SURFACES else 0,
        ],
        np.int64,
    )


def _int_in(value: Any, low: int, high: int, default: int | None) -> int | None:
    if isinstance(value, bool):
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, int | float) and math.isfinite(value) and low <= int(value) <= high:
        return int(value)
    return default


# ---- training: point in time ----------------------------------------------------------------


class EventLog:
    """The training events, indexed for counts "as of t" (events with timestamp <= t only).

    Item counts use one sorted key array (item, time): a window count is two binary searches,
    so a user's 500 candidates cost microseconds, never a scan of the log."""

    def __init__(
        self,
        item: np.ndarray,
        user: np.ndarray,
        time: np.ndarray,
        weight: np.ndarray,
        is_view: np.ndarray,
        item_genres: Any,
    ) -> None:
        """``item_genres``: items x genres (scipy sparse, any non-zero = the item has the genre)."""
        import scipy.sparse as sp

        time = np.asarray(time, np.int64)
        self.t0 = int(time.min()) - 1 if len(time) else 0
        self.t_max = int(time.max()) if len(time) else 0
        self.span = self.t_max - self.t0 + 2  # keys of one item stay inside [item*span, item*span+span)
        self.item_keys = np.sort(np.asarray(item, np.int64) * self.span + (time - self.t0))
        order = np.lexsort((time, np.asarray(user, np.int64)))
        self.user_sorted = np.asarray(user, np.int64)[order]
        self.user_time = time[order]
        self.user_item = np.asarray(item, np.int64)[order]
        self.user_weight = np.asarray(weight, np.float64)[order]
        self.user_view = np.asarray(is_view, bool)[order]
        self.genres = sp.csr_matrix(item_genres, dtype=np.float64)
        self.genres.data[:] = 1.0

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        user_index: Mapping[str, int],
        item_index: Mapping[str, int],
        item_genres: Any,
    ) -> EventLog:
        """From a normalised interactions frame (user_id, item_id, timestamp[, event_type, value]):
        weights as `realtime.event_weight` (feature-engineering's); rows of users or items outside
        the indexes are left out."""
        import pandas as pd

        users = frame["user_id"].map(user_index)
        items = frame["item_id"].map(item_index)
        keep = (users.notna() & items.notna()).to_numpy()
        kinds = (
            frame["event_type"].astype(str).to_numpy()[keep]
            if "event_type" in frame
            else np.full(int(keep.sum()), "interaction")
        )
        values = (
            pd.to_numeric(frame["value"], errors="coerce").to_numpy(np.float64)[keep]
            if "value" in frame
            else np.full(len(kinds), np.nan)
        )
        weight = np.array(
            [event_weight(k, None if math.isnan(v) else v) for k, v in zip(kinds, values, strict=True)],
            np.float64,
        )
        return cls(
            items.to_numpy()[keep].astype(np.int64),
            users.to_numpy()[keep].astype(np.int64),
            frame["timestamp"].to_numpy(np.int64)[keep],
            weight,
            kinds == "view",
            item_genres,
        )

    def _item_window(self, items: np.ndarray, t: float, seconds: float) -> np.ndarray:
        base = items.astype(np.int64) * self.span
        hi = int(min(max(math.floor(t), self.t0), self.t_max)) - self.t0
        lo = int(min(max(math.floor(t - seconds), self.t0), self.t_max)) - self.t0
        return (
            np.searchsorted(self.item_keys, base + hi, "right")
            - np.searchsorted(self.item_keys, base + lo, "right")
        ).astype(np.float64)

    def snapshot(self, user: int | None, items: np.ndarray, t: float) -> ServiceSnapshot:
        """The service features of ``items`` for ``user`` as of time ``t`` (window (t - w, t])."""
        items = np.asarray(items, np.int64)
        counts = np.stack([self._item_window(items, t, d * DAY_S) for d in SPARK_WINDOWS_DAYS], axis=1)
        rt = np.stack([self._item_window(items, t, s) for s in RT_WINDOWS_S], axis=1)
        snap = ServiceSnapshot(counts, rt, np.zeros(len(items)), as_of=float(t))
        if user is None:
            return snap
        lo, hi = np.searchsorted(self.user_sorted, [user, user + 1])
        times = self.user_time[lo:hi]
        past = times <= t
        recent = past & (times > t - AFFINITY_DAYS * DAY_S)
        snap.user_events = float(recent.sum())
        snap.user_views = float((recent & self.user_view[lo:hi]).sum())
        snap.user_rt = tuple(float((past & (times > t - s)).sum()) for s in RT_WINDOWS_S)  # type: ignore[assignment]
        if recent.any():
            affinity = self.user_weight[lo:hi][recent] @ self.genres[self.user_item[lo:hi][recent]]
            snap.category_affinity = _affinity_share(np.asarray(affinity).ravel(), self.genres[items])
        return snap


def _affinity_share(affinity: np.ndarray, candidate_genres: Any) -> np.ndarray:
    """Share of the user's total affinity held by each candidate's categories (0 without any)."""
    total = float(affinity.sum())
    if total <= 0:
        return np.zeros(candidate_genres.shape[0])
    return np.minimum(np.asarray(candidate_genres @ affinity).ravel() / total, 1.0)


# ---- serving: one pipelined KV read ---------------------------------------------------------


def service_feature_reads(user_id: str | None, item_ids: Sequence[str]) -> list[ReadOp]:
    """Every read the service features need, for ONE `KVStore.read` (one round trip):
    feat:user, feat:user:cats, the item windows of feat:item, then `realtime.rt_feature_reads`."""
    uid = user_id or ""
    ops: list[ReadOp] = [HGetAll(user_features_key(uid)), HGetAll(user_category_features_key(uid))]
    ops += [HMGet(item_features_key(i), ITEM_COUNT_FIELDS) for i in item_ids]
    ops += rt_feature_reads(uid, item_ids)
    return ops


def snapshot_from_kv(
    results: Sequence[Any], item_ids: Sequence[str], item_categories: Sequence[Sequence[str]], now: float
) -> ServiceSnapshot:
    """The snapshot from the results of `service_feature_reads` (same order); anything missing
    or malformed reads as its default."""
    m = len(item_ids)
    user = _mapping(results[0])
    cats = _mapping(results[1])
    counts = np.array([[_num(v) for v in _seq(r, 3)] for r in results[2 : 2 + m]], np.float64).reshape(m, 3)
    item_rt, user_rt = rt_counts_from(results[2 + m :], m, now, RT_WINDOWS_S)
    affinity = {str(k): _num(v) for k, v in cats.items()}
    total = sum(v for v in affinity.values() if v > 0)
    share = np.array(
        [
            min(sum(max(affinity.get(c, 0.0), 0.0) for c in set(ic)) / total, 1.0) if total > 0 else 0.0
            for ic in item_categories
        ],
        np.float64,
    )
    return ServiceSnapshot(
        counts,
        np.asarray(item_rt, np.float64).reshape(m, 2),
        share,
        user_events=_num(user.get("n_total")),
        user_views=_num(user.get("n_view")),
        user_rt=(float(user_rt[0]), float(user_rt[1])),
        as_of=now,
    )


def read_service_features(
    kv: KVStore,
    user_id: str | None,
    item_ids: Sequence[str],
    item_categories: Sequence[Sequence[str]],
    now: float,
) -> ServiceSnapshot:
    """The ranking stage's one call: one pipelined KV round trip for the user and every candidate.
    An unreachable KV gives the defaults (ranking degrades, it does not fail)."""
    return read_ranking_inputs(kv, user_id or "", item_ids, item_categories, now)[0]


def read_ranking_inputs(
    kv: KVStore,
    user_id: str,
    item_ids: Sequence[str],
    item_categories: Sequence[Sequence[str]],
    now: float,
    with_reads: Sequence[ReadOp] = (),
) -> tuple[ServiceSnapshot, list[Any] | None]:
    """The ranking stage's hook: ``with_reads`` (its user-state read) and every service feature in
    ONE pipelined round trip. Returns the snapshot and the results of ``with_reads``; an
    unreachable KV gives the defaults and None (the stage serves without real-time state)."""
    from zerorec.errors import BackendUnavailableError

    try:
        results = kv.read([*with_reads, *service_feature_reads(user_id, item_ids)])
    except BackendUnavailableError as exc:
        log.warning("KV unavailable, ranking %s without service features: %s", user_id, exc)
        return ServiceSnapshot.empty(len(item_ids)), None
    n = len(with_reads)
    return snapshot_from_kv(results[n:], item_ids, item_categories, now), list(results[:n])


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any, n: int) -> list[Any]:
    items = list(value) if isinstance(value, list | tuple) else []
    return (items + [None] * n)[:n]


def _num(value: Any) -> float:
    """A stored number (str/bytes/int/float) or 0.0 for anything missing or malformed."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) else 0.0


# ---- the model's columns --------------------------------------------------------------------


def mask_groups(
    sparse: np.ndarray,
    dense: np.ndarray,
    groups: Sequence[str],
    base_dense: Sequence[str],
    base_sparse: int,
    n_items: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Set the columns of every feature group not in ``groups`` to their defaults, in place.

    Columns: ``base_dense`` (`zerorec.features.dense_names`) then SERVICE_DENSE; ``base_sparse``
    fields then the context's. Used by training rows and serving alike, so a ranker trained with a
    group off never sees it at serving either."""
    if "vectors" not in groups:
        for suffix, default in (("score", 0.0), ("logrank", math.log1p(n_items)), ("found", 0.0)):
            name = f"vector_{suffix}"
            if name in base_dense:
                dense[:, list(base_dense).index(name)] = default
    offset = len(base_dense)
    if "spark" not in groups:
        dense[:, offset : offset + len(SPARK_DENSE)] = 0.0
    if "flink" not in groups:
        dense[:, offset + len(SPARK_DENSE) : offset + len(SERVICE_DENSE)] = 0.0
    if "context" not in groups:
        sparse[:, base_sparse : base_sparse + len(CONTEXT_FIELDS)] = 0
    return sparse, dense
