"""Impressions and the online click-through rate (CTR): overall, per channel, per position, per variant.

The flow:
1. The BFF answers every `/recommend` with a `recommendation_id`, each item's `position` (1-based)
   and the `variant` that served it, and records what it served (`served_writes`): the key
   `rec:{<id>}` holds the user, the variant, the model versions and (item, channel) per position,
   for `ZEROREC_RECOMMENDATION_TTL_S`.
2. The client posts an `impression` event (`events/schemas/impression.v1.json`: the id, optionally
   the positions actually shown) and clicks as behavior events carrying the same
   `recommendation_id` (`behavior.v1`) to `POST /events`.
3. The consumer turns each into counter increments (`ctr_writes`: one KV read of the record, then
   HIncr ops) and applies them with the event's own writes and token, so each event counts exactly
   once like the rest of the real-time state.
4. `read_ctr` (the dashboard, `GET /ctr` of the dashboard function, `zerorec experiment report`)
   reads the counters back.

Why the BFF records what it served instead of the client echoing channels: the channel, position
and variant of a click then come from the server, so a client can neither forget nor forge them,
and a click on an item that was not in the answer is told apart (`clicks_unmatched`). The cost is
memory bounded by the TTL: one string per answer, measured in Redis 7 (MEMORY USAGE, 6-digit item
ids, two model versions): 472 bytes for a top 10, 600 for a top 20; at 100 answers/s and the
default 30 min, 180k records, ~85 MB. The BFF writes it alongside item hydration (0.2-0.5 ms on
loopback Redis), so it adds no latency unless the KV is slower than the item function. An
impression or click after the TTL still counts, under `impressions_lost` / `clicks_lost` (no
channel, position or variant known). Set the TTL to 0 to record nothing (no CTR is attributed).

Cost in the consumer: one KV read of the record per impression and per click carrying an id (not
batched with the other reads of a batched delivery); every behavior event also adds one counter
of the hour's event rate.

Counter layout (hash fields; every name is bounded: channels and variants come from code and
configuration, positions are 1..100):
  ctr:{ctr}:all           i, c (item impressions, clicks), i:ch:<channel>, c:ch:<channel>,
                          i:pos:<p>, c:pos:<p>, i:var:<v>, c:var:<v>, i:lost, c:lost, c:miss
  ctr:{ctr}:h:<hour>      i, c, i:var:<v>, c:var:<v> of one hour (event time), kept 8 days
  ctr:{ctr}:models        variant -> JSON of the model versions that served it last
  ctr:{ctr}:h:<hour>      also e:<kind>: every behavior event of the hour (the dashboard's event rates)
  ictr:{<item>}           i, c of one item (bounded by the catalogue; idle 30 days: gone)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from zerorec.storage.kv import Expire, Get, HGetAll, HIncr, HSet, KVStore, Set, WriteOp

IMPRESSION_TYPE = "dev.zerorec.impression.v1"
ALL_KEY = "ctr:{ctr}:all"
MODELS_KEY = "ctr:{ctr}:models"
BUCKET_S = 3600
BUCKET_TTL_S = 8 * 24 * 3600
MAX_POSITIONS = 100
ITEM_TTL_S = 30 * 24 * 3600


def recommendation_key(recommendation_id: str) -> str:
    return f"rec:{{{recommendation_id}}}"


def bucket_key(hour_start_s: int) -> str:
    return f"ctr:{{ctr}}:h:{hour_start_s}"


def item_ctr_key(item_id: str) -> str:
    return f"ictr:{{{item_id}}}"


def new_recommendation_id() -> str:
    """A random id (128 bits, hex): unguessable, so one client cannot count clicks on another's answer."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Served:
    """What one answer served: the record behind its recommendation_id."""

    recommendation_id: str
    user_id: str
    variant: str
    items: tuple[tuple[str, str], ...]  # (item_id, channel) by position - 1
    model_versions: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> str:
        doc = {"u": self.user_id, "v": self.variant, "m": dict(self.model_versions), "i": self.items}
        return orjson.dumps(doc).decode()

    @classmethod
    def decode(cls, recommendation_id: str, raw: str | None) -> Served | None:
        """The record, or None when it is missing (expired, unknown id) or not ours."""
        if not raw:
            return None
        try:
            doc = orjson.loads(raw)
            items = tuple((str(i), str(c)) for i, c in doc["i"])
            return cls(recommendation_id, str(doc["u"]), str(doc["v"]), items, dict(doc.get("m") or {}))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def served_writes(served: Served, ttl_s: int) -> list[WriteOp]:
    """The BFF's write for one answer (nothing when recording is off)."""
    if ttl_s <= 0:
        return []
    return [Set(recommendation_key(served.recommendation_id), served.encode(), ttl_s)]


def _hour(timestamp_s: float) -> int:
    return int(timestamp_s // BUCKET_S) * BUCKET_S


def impression_writes(
    served: Served | None, positions: Sequence[int] | None, timestamp_s: float
) -> list[WriteOp]:
    """Counter increments of one impression event: one item impression per position shown."""
    if served is None:
        return [HIncr(ALL_KEY, "i:lost", 1)]
    shown = sorted(set(positions)) if positions else range(1, len(served.items) + 1)
    shown = [p for p in shown if 1 <= p <= len(served.items)]
    if not shown:
        return []
    fields: dict[str, int] = {"i": len(shown), f"i:var:{served.variant}": len(shown)}
    ops: list[WriteOp] = []
    for p in shown:
        item, channel = served.items[p - 1]
        fields[f"i:ch:{channel}"] = fields.get(f"i:ch:{channel}", 0) + 1
        fields[f"i:pos:{p}"] = 1
        ops += [HIncr(item_ctr_key(item), "i", 1), Expire(item_ctr_key(item), ITEM_TTL_S)]
    bucket = bucket_key(_hour(timestamp_s))
    ops += [HIncr(ALL_KEY, f, n) for f, n in fields.items()]
    ops += [HIncr(bucket, "i", len(shown)), HIncr(bucket, f"i:var:{served.variant}", len(shown))]
    ops += [Expire(bucket, BUCKET_TTL_S)]
    ops.append(HSet(MODELS_KEY, {served.variant: orjson.dumps(dict(served.model_versions)).decode()}))
    return ops


def click_writes(served: Served | None, item_id: str, timestamp_s: float) -> list[WriteOp]:
    """Counter increments of one click carrying a recommendation_id."""
    if served is None:
        return [HIncr(ALL_KEY, "c:lost", 1)]
    position = next((p for p, (i, _) in enumerate(served.items, start=1) if i == item_id), None)
    if position is None:
        return [HIncr(ALL_KEY, "c:miss", 1)]  # an item that was not in that answer
    channel = served.items[position - 1][1]
    bucket = bucket_key(_hour(timestamp_s))
    return [
        HIncr(ALL_KEY, "c", 1),
        HIncr(ALL_KEY, f"c:ch:{channel}", 1),
        HIncr(ALL_KEY, f"c:pos:{position}", 1),
        HIncr(ALL_KEY, f"c:var:{served.variant}", 1),
        HIncr(bucket, "c", 1),
        HIncr(bucket, f"c:var:{served.variant}", 1),
        Expire(bucket, BUCKET_TTL_S),
        HIncr(item_ctr_key(item_id), "c", 1),
        Expire(item_ctr_key(item_id), ITEM_TTL_S),
    ]


def ctr_writes(kv: KVStore, event_type: str, data: Mapping[str, Any], timestamp_s: float) -> list[WriteOp]:
    """The CTR counter writes of one validated event (the consumer applies them with the event's
    token, so they count exactly once); [] for events that say nothing about CTR.
    Reads the served record: one KV round trip, only for impressions and attributed clicks."""
    is_impression = event_type == IMPRESSION_TYPE
    rate: list[WriteOp] = []
    if not is_impression:  # the event rate of the hour, by kind
        bucket = bucket_key(_hour(timestamp_s))
        rate = [HIncr(bucket, f"e:{data.get('kind')}", 1), Expire(bucket, BUCKET_TTL_S)]
    rec_id = data.get("recommendation_id")
    if not rec_id or not (is_impression or data.get("kind") == "click"):
        return rate
    (raw,) = kv.read([Get(recommendation_key(rec_id))])
    served = Served.decode(rec_id, raw)
    if is_impression:
        return impression_writes(served, data.get("positions"), timestamp_s)
    return rate + click_writes(served, str(data["item_id"]), timestamp_s)


# ---- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """Clicks over item impressions, with a Wilson score interval."""

    impressions: int
    clicks: int

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions else None

    def interval(self, confidence: float = 0.95) -> tuple[float, float] | None:
        """Wilson score interval of the CTR (scipy), None without impressions."""
        if self.impressions <= 0:
            return None
        from scipy.stats import binomtest

        k = min(self.clicks, self.impressions)  # a click without its impression (lost) caps at n
        ci = binomtest(k, self.impressions).proportion_ci(confidence_level=confidence, method="wilson")
        return float(ci.low), float(ci.high)

    def to_json(self) -> dict[str, Any]:
        ci = self.interval()
        return {
            "impressions": self.impressions,
            "clicks": self.clicks,
            "ctr": None if self.ctr is None else round(self.ctr, 6),
            "ci95": None if ci is None else [round(ci[0], 6), round(ci[1], 6)],
        }


@dataclass(frozen=True)
class CtrSnapshot:
    """Every counter, grouped."""

    overall: Rate
    by_channel: dict[str, Rate]
    by_position: dict[int, Rate]
    by_variant: dict[str, Rate]
    impressions_lost: int
    clicks_lost: int
    clicks_unmatched: int
    series: list[tuple[str, Rate]]  # (hour start ISO, rate), oldest first
    series_by_variant: dict[str, list[Rate]]
    variant_models: dict[str, dict[str, str]]
    events_by_hour: list[dict[str, int]] = field(default_factory=list)  # kind -> events, per series hour

    def to_json(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_json(),
            "by_channel": {k: v.to_json() for k, v in self.by_channel.items()},
            "by_position": {str(k): v.to_json() for k, v in self.by_position.items()},
            "by_variant": {k: v.to_json() for k, v in self.by_variant.items()},
            "impressions_lost": self.impressions_lost,
            "clicks_lost": self.clicks_lost,
            "clicks_unmatched": self.clicks_unmatched,
            "series": [
                {"hour": h, **r.to_json(), "events": e}
                for (h, r), e in zip(self.series, self.events_by_hour, strict=True)
            ],
            "variant_models": self.variant_models,
        }


def _int(fields: Mapping[str, str], name: str) -> int:
    try:
        return int(float(fields.get(name, 0)))
    except ValueError:
        return 0


def _group(fields: Mapping[str, str], dimension: str) -> dict[str, Rate]:
    names = {f.split(":", 2)[2] for f in fields if f.startswith((f"i:{dimension}:", f"c:{dimension}:"))}
    return {
        n: Rate(_int(fields, f"i:{dimension}:{n}"), _int(fields, f"c:{dimension}:{n}")) for n in sorted(names)
    }


def read_ctr(kv: KVStore, hours: int = 24, now_s: float | None = None) -> CtrSnapshot:
    """The online CTR in one KV round trip; `series` covers the last `hours` hours (1..192)."""
    hours = max(1, min(int(hours), BUCKET_TTL_S // BUCKET_S))
    last = _hour(time.time() if now_s is None else now_s)
    starts = [last - BUCKET_S * k for k in range(hours - 1, -1, -1)]
    results = kv.read([HGetAll(ALL_KEY), HGetAll(MODELS_KEY), *(HGetAll(bucket_key(s)) for s in starts)])
    totals, models_raw, buckets = results[0], results[1], results[2:]
    by_position = {int(p): r for p, r in _group(totals, "pos").items() if p.isdigit()}
    variants = sorted(_group(totals, "var"))
    models: dict[str, dict[str, str]] = {}
    for variant, raw in models_raw.items():
        try:
            models[variant] = {str(k): str(v) for k, v in orjson.loads(raw).items()}
        except (orjson.JSONDecodeError, AttributeError):
            continue
    return CtrSnapshot(
        overall=Rate(_int(totals, "i"), _int(totals, "c")),
        by_channel=_group(totals, "ch"),
        by_position=dict(sorted(by_position.items())),
        by_variant=_group(totals, "var"),
        impressions_lost=_int(totals, "i:lost"),
        clicks_lost=_int(totals, "c:lost"),
        clicks_unmatched=_int(totals, "c:miss"),
        series=[
            (datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:00Z"), Rate(_int(b, "i"), _int(b, "c")))
            for s, b in zip(starts, buckets, strict=True)
        ],
        series_by_variant={
            v: [Rate(_int(b, f"i:var:{v}"), _int(b, f"c:var:{v}")) for b in buckets] for v in variants
        },
        variant_models=models,
        events_by_hour=[{f[2:]: _int(b, f) for f in b if f.startswith("e:")} for b in buckets],
    )


def read_served(kv: KVStore, recommendation_id: str) -> Served | None:
    """The record of one answer (None once expired)."""
    (raw,) = kv.read([Get(recommendation_key(recommendation_id))])
    return Served.decode(recommendation_id, raw)


class ServedLog:
    """The BFF's side: writes each answer's record off the event loop (a thread), never failing
    the answer; the KV is opened on first use."""

    def __init__(self, settings: Any, kv: KVStore | None = None) -> None:
        self.settings = settings
        self.ttl_s = int(settings.recommendation_ttl_s)
        self._kv = kv

    def _write(self, served: Served) -> None:
        if self._kv is None:
            from zerorec.storage import kv_store

            self._kv = kv_store(self.settings)
        self._kv.write(served_writes(served, self.ttl_s))

    async def record(self, served: Served) -> bool:
        """True when written; False (logged) when recording is off or the KV failed."""
        if self.ttl_s <= 0 or not served.items:
            return False
        import asyncio
        import logging

        try:
            await asyncio.to_thread(self._write, served)
        except Exception as exc:  # the answer is still good: only its CTR attribution is lost
            logging.getLogger(__name__).warning(
                "could not record recommendation %s: %r", served.recommendation_id, exc
            )
            return False
        return True


def read_item_ctr(kv: KVStore, item_id: str) -> Rate:
    """One item's impressions and clicks."""
    (fields,) = kv.read([HGetAll(item_ctr_key(item_id))])
    return Rate(_int(fields, "i"), _int(fields, "c"))
