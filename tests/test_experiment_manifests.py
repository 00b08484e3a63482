"""knative/experiments: the A/B split of the BFF as Knative revisions. The manifest is the committed
recommender Service plus a named candidate revision, its variant and the traffic block, nothing else
(so it cannot drift from serving/recommender.yaml); the CRD validation of every YAML under knative/
(tests/test_knative_manifests.py) covers it too."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from zerorec import knative_validate as kv

KNATIVE = Path(__file__).resolve().parents[1] / "knative"


def _one(path: Path) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


def test_ab_manifest_is_the_recommender_plus_the_split() -> None:
    base = _one(KNATIVE / "serving" / "recommender.yaml")
    ab = _one(KNATIVE / "experiments" / "recommender-ab.yaml")
    traffic = ab["spec"].pop("traffic")
    assert sum(t["percent"] for t in traffic) == 100
    assert {t["tag"]: t["revisionName"] for t in traffic} == {
        "control": "recommender-control",
        "candidate": "recommender-candidate",
    }
    tmpl = ab["spec"]["template"]
    assert tmpl["metadata"].pop("name") == "recommender-candidate"
    env = tmpl["spec"]["containers"][0]["env"]
    extra = env[len(base["spec"]["template"]["spec"]["containers"][0]["env"]) :]
    assert {e["name"]: e["value"] for e in extra} == {
        "ZEROREC_VARIANT": "candidate",
        "ZEROREC_RECALL_CANDIDATES": "300",
    }
    del env[-len(extra) :]
    assert ab == base


def test_experiments_are_applied_on_purpose_only() -> None:
    main = yaml.safe_load((KNATIVE / "kustomization.yaml").read_text())
    assert not any("experiments" in r for r in main["resources"])
    missing, dangling = kv.kustomization_coverage(KNATIVE)
    assert (missing, dangling) == ([], [])
    overlay = copy.deepcopy(yaml.safe_load((KNATIVE / "experiments" / "kustomization.yaml").read_text()))
    assert overlay["resources"] == ["recommender-ab.yaml"]
