"""A/B experiments: variants inside one BFF revision, assigned by hashed user id, and the report.

Two levels (knative/README.md has the commands):
- **Knative revisions** (a new image, other settings, another model name): each revision of the
  `recommender` Service sets `ZEROREC_VARIANT` (its name in every answer), carries a tag and gets a
  share of the traffic (`kn service update recommender --tag ... --traffic ...`). Knative splits
  requests, not users: a user may see both revisions.
- **Inside one revision** (`ZEROREC_EXPERIMENT`, JSON): the BFF assigns each user to a variant by
  `sha256(experiment name : user id)`, stable across requests, pods and restarts, and applies the
  variant's knobs to that request:

      {"name": "ranker-vs-recall",
       "variants": [{"name": "control", "weight": 50},
                    {"name": "recall-order", "weight": 50, "ranking": false}]}

  Knobs: `ranking` (false: serve recall's order, no DeepFM), `recall_candidates` (1..2000),
  `ranking_url` / `recall_url` / `reranking_url` (another function revision, e.g. a Knative tag
  URL serving another model version: the way to compare two models inside one BFF revision).

Every answer's `variant` is the revision's `ZEROREC_VARIANT`, followed by `/<experiment variant>`
when an experiment is configured (e.g. `default/recall-order`); `zerorec experiment report` groups
CTR by it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zerorec.errors import InvalidInputError

VariantName = str


class Variant(BaseModel):
    """One arm of an in-revision experiment."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    weight: float = Field(default=1.0, gt=0)
    ranking: bool = True
    recall_candidates: int | None = Field(default=None, ge=1, le=2000)
    recall_url: str | None = None
    ranking_url: str | None = None
    reranking_url: str | None = None

    def url_overrides(self) -> dict[str, str]:
        """Settings fields this variant replaces (the BFF copies its Settings with them)."""
        out: dict[str, Any] = {
            "recall_url": self.recall_url,
            "ranking_url": self.ranking_url,
            "reranking_url": self.reranking_url,
            "recall_candidates": self.recall_candidates,
        }
        return {k: v for k, v in out.items() if v is not None}


class Experiment(BaseModel):
    """An in-revision experiment: a name (the hash salt) and weighted variants."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    variants: list[Variant] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _distinct(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be distinct: {names}")
        return self

    def assign(self, user_id: str) -> Variant:
        """The user's variant: stable (a hash of experiment name and user id), weighted."""
        digest = hashlib.sha256(f"{self.name}:{user_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64 * sum(v.weight for v in self.variants)
        for variant in self.variants:
            point -= variant.weight
            if point < 0:
                return variant
        return self.variants[-1]


def parse_experiment(text: str | None) -> Experiment | None:
    """`ZEROREC_EXPERIMENT` as an Experiment (None when empty); InvalidInputError with the reason."""
    if not text or not text.strip():
        return None
    try:
        return Experiment.model_validate_json(text)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3])
        raise InvalidInputError(f"ZEROREC_EXPERIMENT is not a valid experiment: {reasons}") from None


def require_valid_experiment(settings: Any) -> None:
    """Refuse to start (exit 1 with the reason) on a malformed ZEROREC_EXPERIMENT, instead of
    answering every request with an error."""
    from zerorec.settings import RefusedToStart

    try:
        parse_experiment(settings.experiment)
    except InvalidInputError as exc:
        raise RefusedToStart(f"zerorec: refusing to start the recommender: {exc}") from None


class Assigner:
    """What the BFF asks per request: the variant name and knobs of a user."""

    def __init__(self, revision_variant: str, experiment: Experiment | None) -> None:
        self.revision_variant = revision_variant
        self.experiment = experiment

    @classmethod
    def from_settings(cls, settings: Any) -> Assigner:
        return cls(settings.variant, parse_experiment(settings.experiment))

    def assign(self, user_id: str) -> tuple[str, Variant | None]:
        if self.experiment is None:
            return self.revision_variant, None
        variant = self.experiment.assign(user_id)
        return f"{self.revision_variant}/{variant.name}", variant


# ---- the report ---------------------------------------------------------------------------------


def model_metrics(objects: Any, model_name: str, version: str) -> dict[str, Any]:
    """The offline metrics in a published bundle's manifest ({} when the bundle is unknown)."""
    import json

    from zerorec.bundle import MANIFEST
    from zerorec.errors import NotFoundError

    try:
        manifest = json.loads(objects.get(f"models/{model_name}/{version}/{MANIFEST}"))
    except (NotFoundError, ValueError, KeyError):
        return {}
    metrics = manifest.get("metrics") if isinstance(manifest, dict) else None
    return dict(metrics) if isinstance(metrics, dict) else {}


def experiment_report(
    kv: Any, objects: Any = None, model_name: str = "recommender", hours: int = 24
) -> dict[str, Any]:
    """CTR per variant with its Wilson 95% interval, each variant's model versions and their
    offline metrics, and the CTR difference of every variant against the first (the control)."""
    from zerorec.ctr import read_ctr

    snap = read_ctr(kv, hours=hours)
    rows = []
    for name, rate in snap.by_variant.items():
        versions = snap.variant_models.get(name, {})
        version = versions.get("ranking") or versions.get("recall")
        metrics = model_metrics(objects, model_name, version) if objects is not None and version else {}
        rows.append(
            {"variant": name, **rate.to_json(), "model_versions": versions, "offline_metrics": metrics}
        )
    return {
        "variants": rows,
        "overall": snap.overall.to_json(),
        "impressions_lost": snap.impressions_lost,
        "clicks_lost": snap.clicks_lost,
        "clicks_unmatched": snap.clicks_unmatched,
    }


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a text table."""
    lines = [
        f"{'variant':<28} {'impr':>8} {'clicks':>7} {'CTR':>7} {'95% CI (Wilson)':>17}  "
        "model / offline metrics",
    ]
    for row in report["variants"]:
        ctr = "-" if row["ctr"] is None else f"{row['ctr']:.4f}"
        ci = "-" if row["ci95"] is None else f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"
        versions = ",".join(f"{k}={v}" for k, v in sorted(row["model_versions"].items())) or "-"
        metrics = (
            ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in row["offline_metrics"].items()
            )
            or "-"
        )
        lines.append(
            f"{row['variant']:<28} {row['impressions']:>8} {row['clicks']:>7} {ctr:>7} {ci:>17}  "
            f"{versions} | {metrics}"
        )
    o = report["overall"]
    lines.append(
        f"{'(overall)':<28} {o['impressions']:>8} {o['clicks']:>7} "
        f"{'-' if o['ctr'] is None else format(o['ctr'], '.4f'):>7}"
    )
    lines.append(
        f"not attributed: {report['impressions_lost']} impressions and {report['clicks_lost']} clicks "
        f"whose answer had expired, {report['clicks_unmatched']} clicks on items not in the answer"
    )
    return "\n".join(lines)
