"""Render what `./local/task deploy` applies: the objects of knative/kustomization.yaml, with the
images' registry filled in, selected by phase or service, one file per object, checked.

    python local/deploy.py render --registry REG [--tag 0.1.0] [--phase core|data|compute|all]
                                  [--service NAME] --out DIR

Writes DIR/objects/NN-<phase>-<kind>-<name>.yaml (in apply order: the phases in order core, data,
compute; in a phase the Job, the sinks, the Services, then the sources that point at them),
DIR/overlay/kustomization.yaml (the same substitution as a kustomize overlay, for `kubectl apply -k`),
and prints the images the selected objects use, one a line (what deploy must push). The objects
are then validated with zerorec.knative_validate (CRD schemas, strict, plus the webhook rules);
any error fails the render (exit 1). Without the CRD folder (../shared/knative-crds, or
ZEROREC_SHARED_DIR) the validation is skipped with a note on stderr, unless --require-crds.

Phases are the seed's (seed/services-v2.md, "Deployment"): core = the recommendation path (BFF,
recall, ranking, reranking) and the init Job that makes it Ready; data = user, item, behavior,
consumer, worker and their event wiring; compute = the on-demand jobs and their schedules. Each
object says its phase in label zerorec.dev/phase. --service NAME selects that Knative Service
and the sources that deliver to it (or the object of that name, e.g. the init Job zerorec-init).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from zerorec import knative_validate as kv

REPO = Path(__file__).resolve().parents[1]
KNATIVE = REPO / "knative"
PHASES = ("core", "data", "compute")
PHASE_LABEL = "zerorec.dev/phase"
IMAGES = ("zerorec-serve", "zerorec-jobs")  # the short names the manifests use (Containerfile targets)
# Apply order inside a phase: what others refer to first.
KIND_ORDER = {"Job": 0, "KafkaSink": 1, "Service": 2, "KafkaSource": 3, "PingSource": 3}


class DeployError(Exception):
    """A request the render cannot satisfy (unknown phase or service, a broken manifest tree)."""


def load_objects(knative_dir: Path = KNATIVE) -> tuple[str | None, list[dict[str, Any]]]:
    """(namespace, every object) reachable from knative_dir/kustomization.yaml, in listed order."""
    kfile = knative_dir / "kustomization.yaml"
    data = yaml.safe_load(kfile.read_text()) or {}
    objects: list[dict[str, Any]] = []
    for entry in data.get("resources") or []:
        target = knative_dir / entry
        if target.is_dir():
            objects += load_objects(target)[1]
        elif target.is_file():
            objects += [d for d in yaml.safe_load_all(target.read_text()) if d]
        else:
            raise DeployError(f"{kfile}: listed resource {entry} does not exist")
    return data.get("namespace"), objects


def image_ref(image: str, registry: str, tag: str | None) -> str:
    """zerorec-serve:0.1.0 -> REG/zerorec-serve:TAG; other images unchanged (kustomize's `images:`)."""
    name, _, old_tag = image.partition(":")
    if name not in IMAGES:
        return image
    return f"{registry.rstrip('/')}/{name}:{tag or old_tag or 'latest'}"


def _containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = obj.get("spec") or {}
    pod = ((spec.get("template") or {}).get("spec")) or {}
    for key in ("containers", "initContainers"):
        yield from pod.get(key) or []


def set_images(obj: dict[str, Any], registry: str, tag: str | None) -> set[str]:
    """Rewrite the object's container images in place; the images it now uses."""
    used = set()
    for c in _containers(obj):
        if "image" in c:
            c["image"] = image_ref(c["image"], registry, tag)
            used.add(c["image"])
    return used


def _phase(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    phase = (meta.get("labels") or {}).get(PHASE_LABEL)
    if phase not in PHASES:
        where = f"{obj.get('kind')}/{meta.get('name')}"
        raise DeployError(f"{where}: label {PHASE_LABEL} must be one of {PHASES}")
    return phase


def _sink_name(obj: dict[str, Any]) -> str | None:
    ref = (((obj.get("spec") or {}).get("sink")) or {}).get("ref") or {}
    return ref.get("name") if ref.get("kind") == "Service" else None


def select(
    objects: Iterable[dict[str, Any]], phase: str = "all", service: str | None = None
) -> list[dict[str, Any]]:
    """The objects of a phase (or all), or of one service (the Service and the sources feeding it)."""
    objects = list(objects)
    if phase != "all" and phase not in PHASES:
        raise DeployError(f"unknown phase {phase!r}: one of {', '.join(PHASES)}, all")
    if service:
        chosen = [
            o for o in objects
            if (o["metadata"]["name"] == service and o["kind"] != "PingSource") or _sink_name(o) == service
        ]
        if not chosen:
            names = sorted(o["metadata"]["name"] for o in objects if o["kind"] in ("Service", "Job"))
            raise DeployError(f"no service {service!r}: one of {', '.join(names)}")
        objects = chosen
    elif phase != "all":
        objects = [o for o in objects if _phase(o) == phase]
    return sorted(objects, key=lambda o: (PHASES.index(_phase(o)), KIND_ORDER.get(o["kind"], 9)))


def overlay(knative_dir: Path, out: Path, registry: str, tag: str | None) -> Path:
    """A kustomize overlay of knative_dir with the registry (kubectl apply -k DIR does what deploy does)."""
    out.mkdir(parents=True, exist_ok=True)
    images = [{"name": n, "newName": f"{registry.rstrip('/')}/{n}", **({"newTag": tag} if tag else {})}
              for n in IMAGES]  # fmt: skip
    doc = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(knative_dir, out)],
        "images": images,
    }
    path = out / "kustomization.yaml"
    head = "# Written by local/deploy.py: knative/ with the registry's images.\n"
    path.write_text(head + yaml.safe_dump(doc, sort_keys=False))
    return path


def render(
    registry: str,
    out: Path,
    tag: str | None = None,
    phase: str = "all",
    service: str | None = None,
    knative_dir: Path = KNATIVE,
) -> tuple[list[Path], set[str]]:
    """Write the selected objects under out/objects (and the overlay); (files, images used)."""
    if not registry or "://" in registry or registry.endswith(":"):
        raise DeployError(f"registry {registry!r}: give host[:port][/path], e.g. registry.example/zerorec")
    namespace, objects = load_objects(knative_dir)
    chosen = select(objects, phase, service)
    objdir = out / "objects"
    objdir.mkdir(parents=True, exist_ok=True)
    for old in objdir.glob("*.yaml"):
        old.unlink()
    files, images = [], set()
    for i, obj in enumerate(chosen):
        if namespace:
            obj["metadata"]["namespace"] = namespace
        images |= set_images(obj, registry, tag)
        path = objdir / f"{i:02d}-{_phase(obj)}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        files.append(path)
    overlay(knative_dir, out / "overlay", registry, tag)
    return files, images


def main(argv: list[str] | None = None) -> int:
    """CLI: render, print the images, validate."""
    parser = argparse.ArgumentParser(prog="local/deploy.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="write the objects deploy applies")
    r.add_argument("--registry", required=True)
    r.add_argument("--tag", default=None, help="image tag (default: the manifests', the project version)")
    r.add_argument("--phase", default="all", help="core | data | compute | all")
    r.add_argument("--service", default=None, help="one service (overrides --phase)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--crds", type=Path, default=None, help="CRD folder (default: ../shared/knative-crds)")
    r.add_argument("--require-crds", action="store_true", help="fail when the CRD folder is missing")
    r.add_argument("--knative", type=Path, default=KNATIVE, help="manifest tree (default: knative/)")
    args = parser.parse_args(argv)
    try:
        files, images = render(args.registry, args.out, args.tag, args.phase, args.service, args.knative)
    except DeployError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    crds = args.crds or kv.default_crd_dir(REPO)
    if crds.is_dir():
        report = kv.validate_paths([args.out / "objects"], crds, strict=True)
        for f in report.errors:
            print(f"deploy: INVALID {Path(f.path).name} {f.doc}: {f.message}", file=sys.stderr)
        if not report.ok:
            return 1
        print(f"deploy: {len(files)} objects rendered and valid (CRDs {crds})", file=sys.stderr)
    elif args.require_crds:
        print(f"deploy: CRD folder not found: {crds}", file=sys.stderr)
        return 2
    else:
        print(f"deploy: {len(files)} objects rendered, not validated (no CRDs at {crds})", file=sys.stderr)
    print("\n".join(sorted(images)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
