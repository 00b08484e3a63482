"""The dashboard's data and pages: server-rendered HTML (jinja2) over the other functions' APIs and the KV.

Pages: `/` overview (model versions with their training metrics, the evaluation report and plot,
event rates, CTR over time, experiments), `/users/<id>` (recent items, profile, the current
recommendation with channels, reasons and a "why" per item, asked of the BFF), `/items/<id>`
(metadata from the item function, similar items, the item's CTR), `/ctr` (the CTR snapshot as
JSON). No JavaScript, no external assets: charts are inline SVG.

Per request: the overview reads at most MAX_VERSIONS manifests and one KV round trip of counters; a
user page makes three calls (user, recommender, item); an item page two (item, the similar items'
metadata) and one KV read. Similar items come from the bundle's ALS item factors (cosine), loaded
once per model version and only when the factors fit SIMILAR_MAX_BYTES (`similar_items`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape

from zerorec.ctr import Rate, read_ctr, read_item_ctr
from zerorec.errors import NotFoundError
from zerorec.settings import Settings

MAX_VERSIONS = 8
SIMILAR_MAX_BYTES = 16 * 1024 * 1024  # ALS item factors the dashboard may hold (~65k items x 64)
USER_ID = re.compile(r"^[\w.:@\-]{1,128}$")  # as the BFF's RecommendRequest
ITEM_ID = re.compile(r"^[^\s\x00-\x1f]{1,128}$")  # as the item schema
TEMPLATES = Path(__file__).resolve().parent / "templates"

# What each recall channel means, for the "why" of an item.
CHANNEL_WHY = {
    "als": "people whose taste matches yours liked it (ALS)",
    "ease": "it goes with the items in your history (EASE)",
    "itemcf": "it is similar to what you interacted with recently (item-CF)",
    "vector": "its embedding is close to your recent items (vectors)",
    "hot": "it is popular right now",
    "fresh": "it is new in the catalogue",
}

_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))


def render(template: str, **context: Any) -> str:
    """One page as HTML (autoescaped)."""
    return _env.get_template(template).render(**context)


def valid_id(value: str, kind: str = "user") -> bool:
    return bool((USER_ID if kind == "user" else ITEM_ID).match(value))


def why(channel: str, reasons: list[str], recent_titles: list[str]) -> str:
    """A sentence saying why an item is recommended: its channel, then reranking's reasons."""
    text = CHANNEL_WHY.get(channel, f"found by the {channel} channel")
    if channel in ("itemcf", "vector", "ease") and recent_titles:
        text += " such as " + ", ".join(recent_titles[:2])
    extra = [r for r in reasons if not r.startswith("found by")]
    return text + ("; " + "; ".join(extra) if extra else "")


def svg_line(values: list[float | None], width: int = 640, height: int = 140) -> dict[str, Any]:
    """Points of an inline SVG polyline (None: no point) and the y maximum."""
    present = [v for v in values if v is not None]
    top = max(present) if present else 0.0
    top = top if top > 0 else 1.0
    step = width / max(len(values) - 1, 1)
    usable = height - 10
    points = [
        f"{k * step:.1f},{height - v / top * usable:.1f}" for k, v in enumerate(values) if v is not None
    ]
    dots = [p.split(",") for p in points]  # a lone hour is a dot, not an invisible line
    return {"points": " ".join(points), "dots": dots, "max": top, "width": width, "height": height}


@dataclass
class _Factors:
    version: str
    item_ids: list[str]
    index: dict[str, int]
    unit: np.ndarray  # row-normalised ALS item factors


class Dashboard:
    """Gathers each page's data; blocking KV and object-store reads run in threads."""

    def __init__(self, settings: Settings, kv: Any = None, objects: Any = None, client: Any = None) -> None:
        self.settings = settings
        self._kv = kv
        self._objects = objects
        self.client = client or httpx.AsyncClient(timeout=settings.request_timeout_s)
        self._factors: _Factors | None = None

    @property
    def kv(self) -> Any:
        if self._kv is None:
            from zerorec.storage import kv_store

            self._kv = kv_store(self.settings)
        return self._kv

    @property
    def objects(self) -> Any:
        if self._objects is None:
            from zerorec.storage import object_store

            self._objects = object_store(self.settings)
        return self._objects

    async def aclose(self) -> None:
        await self.client.aclose()

    # ------------------------------------------------------------------ calls to other functions

    async def _post(self, url: str, body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """(JSON answer, None) or (None, why not): a page shows what failed instead of failing."""
        try:
            resp = await self.client.post(url, json=body)
        except httpx.HTTPError as exc:
            return None, f"{url} unreachable ({type(exc).__name__})"
        if resp.status_code != 200:
            return None, f"{url} answered {resp.status_code}"
        return resp.json(), None

    async def _items_meta(self, item_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not item_ids:
            return {}
        got, _ = await self._post(self.settings.item_url.rstrip("/") + "/", {"item_ids": item_ids[:100]})
        return (got or {}).get("items", {})

    # ------------------------------------------------------------------ overview

    def _models(self) -> dict[str, Any]:
        from zerorec.bundle import MANIFEST, latest_version, list_versions

        name = self.settings.model_name
        try:
            latest = latest_version(self.objects, name)
        except NotFoundError:
            latest = None
        rows = []
        for version in reversed(list_versions(self.objects, name)[-MAX_VERSIONS:]):
            try:
                manifest = json.loads(self.objects.get(f"models/{name}/{version}/{MANIFEST}"))
            except (NotFoundError, ValueError):
                continue
            rows.append(
                {
                    "version": version,
                    "latest": version == latest,
                    "created_at": manifest.get("created_at", ""),
                    "metrics": manifest.get("metrics") or {},
                    "data_window": manifest.get("data_window") or {},
                }
            )
        return {"name": name, "latest": latest, "versions": rows}

    def _evaluation(self) -> dict[str, Any] | None:
        path = Path(self.settings.evaluation_dir) / "report.json"
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return {
            "dataset": report.get("dataset", ""),
            "protocol": report.get("protocol", ""),
            "stages": report.get("stages") or [],
            "has_plot": (Path(self.settings.evaluation_dir) / "report.png").is_file(),
        }

    async def overview(self, hours: int = 24) -> dict[str, Any]:
        snap, models, evaluation = await asyncio.gather(
            asyncio.to_thread(read_ctr, self.kv, hours),
            asyncio.to_thread(self._models),
            asyncio.to_thread(self._evaluation),
        )
        events = [sum(e.values()) for e in snap.events_by_hour]
        from zerorec.experiments import parse_experiment

        return {
            "models": models,
            "evaluation": evaluation,
            "ctr": snap,
            "ctr_chart": svg_line([r.ctr for _, r in snap.series]),
            "events_chart": svg_line([float(e) for e in events]),
            "events_total": sum(events),
            "events_by_kind": _sum_kinds(snap.events_by_hour),
            "hours": [h for h, _ in snap.series],
            "experiment": parse_experiment(self.settings.experiment),
            "revision_variant": self.settings.variant,
        }

    # ------------------------------------------------------------------ user page

    async def user_page(self, user_id: str, n: int = 10) -> dict[str, Any]:
        s = self.settings
        (profile, user_err), (answer, rec_err) = await asyncio.gather(
            self._post(s.user_url.rstrip("/") + "/", {"user_id": user_id}),
            self._post(s.recommender_url.rstrip("/") + "/recommend", {"user_id": user_id, "n": n}),
        )
        profile = profile or {"recent_items": [], "seen_items": [], "category_affinity": {}}
        recent = profile.get("recent_items", [])[:20]
        meta = await self._items_meta(recent)
        recent_rows = [{"item_id": i, "title": (meta.get(i) or {}).get("title") or i} for i in recent]
        titles = [r["title"] for r in recent_rows]
        items = []
        for it in (answer or {}).get("items", []):
            items.append({**it, "why": why(it["channel"], it.get("reasons", []), titles)})
        affinity = sorted(profile.get("category_affinity", {}).items(), key=lambda kv: -kv[1])[:8]
        return {
            "user_id": user_id,
            "profile": profile,
            "recent": recent_rows,
            "affinity": affinity,
            "answer": answer,
            "items": items,
            "errors": [e for e in (user_err, rec_err) if e],
        }

    # ------------------------------------------------------------------ item page

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]] | None:
        """The k nearest items by cosine of ALS item factors in the latest bundle; None when there
        are none (no model, no ALS channel, factors over SIMILAR_MAX_BYTES); [] for an unknown item."""
        from zerorec.bundle import latest_version, load_bundle

        name = self.settings.model_name
        try:
            version = latest_version(self.objects, name)
            if self._factors is None or self._factors.version != version:
                wanted = {"channels/als/item_factors.npy", "meta.json"}
                bundle = load_bundle(self.objects, name, version, select=wanted.__contains__)
                if bundle.manifest["files"]["channels/als/item_factors.npy"]["size"] > SIMILAR_MAX_BYTES:
                    return None
                factors = np.asarray(bundle.npy("channels/als/item_factors.npy"), dtype=np.float32)
                ids = [str(i) for i in bundle.json("meta.json")["item_ids"]]
                norms = np.linalg.norm(factors, axis=1, keepdims=True)
                unit = factors / np.maximum(norms, 1e-12)
                self._factors = _Factors(version, ids, {i: k for k, i in enumerate(ids)}, unit)
        except (NotFoundError, KeyError):
            return None
        f = self._factors
        row = f.index.get(item_id)
        if row is None:
            return []
        scores = f.unit @ f.unit[row]
        scores[row] = -math.inf
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top = top[np.argsort(-scores[top])]
        return [(f.item_ids[j], float(scores[j])) for j in top if np.isfinite(scores[j])]

    async def item_page(self, item_id: str) -> dict[str, Any] | None:
        meta, similar, rate = await asyncio.gather(
            self._items_meta([item_id]),
            asyncio.to_thread(self.similar_items, item_id),
            asyncio.to_thread(read_item_ctr, self.kv, item_id),
        )
        if item_id not in meta and not similar and rate.impressions == 0:
            return None
        similar_meta = await self._items_meta([i for i, _ in similar or []])
        return {
            "item_id": item_id,
            "meta": meta.get(item_id),
            "similar": [
                {"item_id": i, "score": s, "title": (similar_meta.get(i) or {}).get("title") or i}
                for i, s in similar or []
            ],
            "similar_available": similar is not None,
            "rate": rate,
        }


def _sum_kinds(hours: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in hours:
        for kind, n in h.items():
            out[kind] = out.get(kind, 0) + n
    return dict(sorted(out.items()))


def fmt_rate(rate: Rate) -> str:
    """'3.1% [2.0%, 4.6%]' or '-'."""
    if rate.ctr is None:
        return "-"
    low, high = rate.interval() or (0.0, 0.0)
    return f"{100 * rate.ctr:.1f}% [{100 * low:.1f}%, {100 * high:.1f}%]"


_env.filters["rate"] = fmt_rate
