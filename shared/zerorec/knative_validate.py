"""Offline validation of Knative manifests: CRD schemas (strict) plus the webhook-only rules.

The CRD files are the ones copied under `knative-crds/` (see its README). Schema checks run with
jsonschema (Draft 4 is what `openAPIV3Schema` is closest to) in a strict mode that rejects unknown
fields, which the API server would silently drop. A lint adds the rules that only the admission
webhooks enforce (annotation placement and values, probe ports, scale bounds, resource budgets).

CLI: `python -m zerorec.knative_validate [--crds DIR] PATH...` (files or folders, recursive);
exit status 1 when any document is rejected.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

AUTOSCALING = "autoscaling.knative.dev/"
# Kinds we can't check against a CRD here but which are legitimate in knative/ (built-ins, kustomize):
# linted only (metadata; a batch/v1 Job's pod template gets a basic shape check, see _lint_job).
SKIPPED_GROUPS = {"v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1"}
# What Knative's webhook refuses in a revision's pod spec (serving pkg/apis/serving/k8s_validation.go,
# v0.39 = Knative 1.12): mounts on these paths, and these env names (Knative sets them).
RESERVED_MOUNT_PATHS = {"/", "/dev", "/dev/log", "/tmp", "/var", "/var/log"}
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
KUSTOMIZE_GROUP = "kustomize.config.k8s.io"

# The seed's resource budget (seed/services-v2.md): service -> (cpu millicores, memory bytes).
Mi = 1024 * 1024
SEED_BUDGET: dict[str, tuple[int, int]] = {
    "recall": (200, 512 * Mi),
    "ranking": (200, 512 * Mi),
    "reranking": (100, 256 * Mi),
    "recommender": (100, 128 * Mi),
    "worker": (200, 256 * Mi),
    "beat": (100, 128 * Mi),
    "consumer": (250, 256 * Mi),
    "user": (150, 256 * Mi),
    "item": (150, 256 * Mi),
    "behavior": (150, 256 * Mi),
    "model-training": (2000, 2048 * Mi),
    "feature-engineering": (500, 1024 * Mi),
    "vector-generation": (300, 512 * Mi),
    "flink-realtime": (500, 1024 * Mi),
    # Not in the seed: the dashboard of issue 14 (scale-to-zero). Measured RSS 145 MB after every
    # page (scipy.stats for the Wilson intervals is 63 of it), plus the ALS factors it may load (16 MiB).
    "dashboard": (100, 256 * Mi),
    # knative/overlays/compact: recall, ranking and reranking in one Service, with their budgets
    "pipeline": (500, 1280 * Mi),
}
# The most a CPU limit may burst above a budget under one core (the request stays the budget).
BURST_CPU_MILLIS = 1000
# A Service whose budget is another's (same image, other port): label zerorec.dev/budget-of.
BUDGET_LABEL = "zerorec.dev/budget-of"


@dataclass
class Finding:
    """One rejected document (or a note about a skipped one)."""

    path: str
    doc: str
    message: str


@dataclass
class Report:
    """Everything found in one run."""

    errors: list[Finding] = field(default_factory=list)
    skipped: list[Finding] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


# --------------------------------------------------------------------------- schemas


def _strictify(node: Any) -> Any:
    """Add additionalProperties:false where properties are listed; int-or-string -> integer|string."""
    if isinstance(node, dict):
        out = {k: _strictify(v) for k, v in node.items()}
        if out.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            if "anyOf" not in out and "oneOf" not in out:
                out["type"] = ["integer", "string"]
        if (
            "properties" in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in out
        ):
            out["additionalProperties"] = False
        # OpenAPI's `nullable: true` means null is allowed too.
        if out.get("nullable") and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_strictify(v) for v in node]
    return node


def _root_schema(schema: dict[str, Any], strict: bool) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    props = schema.setdefault("properties", {})
    # The API server always accepts these, even where a CRD's schema does not list them.
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props["metadata"] = {"type": "object"}
    return _strictify(schema) if strict else schema


def load_crds(crd_dir: Path, strict: bool = True) -> dict[tuple[str, str, str], jsonschema.Draft4Validator]:
    """Map (group, version, kind) to a validator for every served version of every CRD under crd_dir."""
    validators: dict[tuple[str, str, str], jsonschema.Draft4Validator] = {}
    for path in sorted(crd_dir.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                schema = _root_schema(version["schema"]["openAPIV3Schema"], strict)
                key = (spec["group"], version["name"], spec["names"]["kind"])
                validators[key] = jsonschema.Draft4Validator(schema)
    return validators


# --------------------------------------------------------------------------- quantities

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEM_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}
_MEM = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)$")


def cpu_millis(value: str | int | float) -> float:
    """Kubernetes CPU quantity -> millicores ("250m" -> 250, "1" -> 1000)."""
    m = _CPU.match(str(value))
    if not m:
        raise ValueError(f"bad cpu quantity {value!r}")
    return float(m.group(1)) * (1 if m.group(2) else 1000)


def mem_bytes(value: str | int | float) -> float:
    """Kubernetes memory quantity -> bytes ("512Mi" -> 536870912)."""
    m = _MEM.match(str(value))
    if not m:
        raise ValueError(f"bad memory quantity {value!r}")
    return float(m.group(1)) * _MEM_UNITS[m.group(2)]


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?$")


def duration_s(value: str) -> float:
    """Go duration subset ("6s", "1m30s", "1h") -> seconds."""
    m = _DURATION.match(value)
    if not value or not m or not any(m.groups()):
        raise ValueError(f"bad duration {value!r}")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


# --------------------------------------------------------------------------- webhook lint


def _check_string_map(obj: Any, where: str) -> list[str]:
    if obj is None:
        return []
    if not isinstance(obj, dict):
        return [f"{where} must be a map of strings"]
    return [f"{where}.{k}: value must be a string, got {type(v).__name__}"
            for k, v in obj.items() if not isinstance(v, str)]


def _lint_metadata(meta: Any, where: str) -> list[str]:
    if not isinstance(meta, dict):
        return [f"{where} must be an object"]
    allowed = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}
    errs = [f"{where}.{k}: unknown metadata field" for k in meta if k not in allowed]
    errs += _check_string_map(meta.get("labels"), f"{where}.labels")
    errs += _check_string_map(meta.get("annotations"), f"{where}.annotations")
    return errs


def _lint_autoscaling(ann: dict[str, Any], where: str) -> list[str]:
    errs: list[str] = []

    def num(key: str) -> float | None:
        for k in (AUTOSCALING + key, AUTOSCALING + re.sub(r"-(\w)", lambda m: m.group(1).upper(), key)):
            if k in ann:
                try:
                    return float(ann[k])
                except (TypeError, ValueError):
                    errs.append(f"{where}: {k}={ann[k]!r} is not a number")
                    return None
        return None

    lo, hi = num("min-scale"), num("max-scale")
    for key, val in (("min-scale", lo), ("max-scale", hi), ("initial-scale", num("initial-scale"))):
        if val is not None and (val < 0 or val != int(val)):
            errs.append(f"{where}: {key} must be a non-negative integer")
    if lo is not None and hi is not None and hi != 0 and lo > hi:
        errs.append(f"{where}: min-scale {lo:g} > max-scale {hi:g}")
    target = num("target")
    if target is not None and target < 0.01:
        errs.append(f"{where}: target must be >= 0.01")
    util = num("target-utilization-percentage")
    if util is not None and not 1 <= util <= 100:
        errs.append(f"{where}: target-utilization-percentage must be 1..100")
    act = num("activation-scale")
    if act is not None and act < 2:
        errs.append(f"{where}: activation-scale must be >= 2")
    klass = ann.get(AUTOSCALING + "class", "kpa.autoscaling.knative.dev")
    metric = ann.get(AUTOSCALING + "metric")
    if metric is not None:
        allowed = {"concurrency", "rps"} if klass == "kpa.autoscaling.knative.dev" else {"cpu", "memory"}
        if metric not in allowed:
            errs.append(f"{where}: metric {metric!r} not allowed with class {klass} ({sorted(allowed)})")
    for key, lo_s, hi_s in (
        ("window", 6, 3600),
        ("scale-down-delay", 0, 3600),
        ("scale-to-zero-pod-retention-period", 0, 3600),
    ):
        raw = ann.get(AUTOSCALING + key)
        if raw is None:
            continue
        try:
            secs = duration_s(str(raw))
        except ValueError as exc:
            errs.append(f"{where}: {key}: {exc}")
            continue
        if not lo_s <= secs <= hi_s:
            errs.append(f"{where}: {key}={raw} outside {lo_s}s..{hi_s}s")
    return errs


def _lint_service(doc: dict[str, Any]) -> list[str]:
    errs: list[str] = []
    meta = doc.get("metadata") or {}
    name = meta.get("name", "?")
    for key in (meta.get("annotations") or {}):
        if str(key).startswith(AUTOSCALING):
            errs.append(
                f"metadata.annotations.{key}: autoscaling annotations must be put under "
                '"spec.template.metadata.annotations" to work'
            )
    template = ((doc.get("spec") or {}).get("template")) or {}
    tmeta = template.get("metadata")
    if tmeta is not None:
        errs += _lint_metadata(tmeta, "spec.template.metadata")
        errs += _lint_autoscaling(tmeta.get("annotations") or {}, "spec.template.metadata.annotations")
    tspec = template.get("spec") or {}
    timeout = tspec.get("timeoutSeconds")
    if isinstance(timeout, int) and not 0 <= timeout <= 600:
        errs.append("spec.template.spec.timeoutSeconds must be 0..600")
    cc = tspec.get("containerConcurrency")
    if isinstance(cc, int) and not 0 <= cc <= 1000:
        errs.append("spec.template.spec.containerConcurrency must be 0..1000")
    containers = tspec.get("containers") or []
    if len(containers) > 1 and sum(1 for c in containers if c.get("ports")) != 1:
        errs.append("with several containers exactly one must declare a port")
    errs += _lint_volumes(tspec, "spec.template.spec", knative=True)
    budget_key = (meta.get("labels") or {}).get(BUDGET_LABEL, name)
    budget = SEED_BUDGET.get(budget_key)
    if budget is None:
        errs.append(f"service {name!r}: no seed budget (use a seed service name or label {BUDGET_LABEL})")
    for i, c in enumerate(containers):
        where = f"spec.template.spec.containers[{i}]"
        errs += _lint_container(c, where, budget, budget_key)
    return errs


def _lint_volumes(pod: dict[str, Any], where: str, knative: bool) -> list[str]:
    """Mounts name a volume of the pod; Knative: no reserved paths or env, read-only unless emptyDir."""
    errs: list[str] = []
    volumes = {v.get("name"): v for v in pod.get("volumes") or [] if isinstance(v, dict)}
    for ci, c in enumerate(pod.get("containers") or []):
        if not isinstance(c, dict):
            continue
        cw = f"{where}.containers[{ci}]"
        for mi, m in enumerate(c.get("volumeMounts") or []):
            mw, name, mount_path = f"{cw}.volumeMounts[{mi}]", m.get("name"), str(m.get("mountPath", ""))
            if name not in volumes:
                errs.append(f"{mw}: volumeMount {name!r} has no matching volume")
                continue
            if not knative:
                continue
            if mount_path.rstrip("/") in RESERVED_MOUNT_PATHS or mount_path == "/":
                errs.append(f"{mw}: mountPath {mount_path!r} is a reserved path in Knative")
            writable_kinds = ("emptyDir", "persistentVolumeClaim")
            if not any(k in volumes[name] for k in writable_kinds) and not m.get("readOnly"):
                errs.append(f"{mw}: volume mount should be readOnly for this type of volume")
        if knative:
            errs += [f"{cw}.env: {e.get('name')} is a reserved environment variable in Knative"
                     for e in c.get("env") or [] if e.get("name") in RESERVED_ENV]  # fmt: skip
            if (c.get("securityContext") or {}).get("privileged"):
                errs.append(f"{cw}.securityContext.privileged: Knative allows only false")
    return errs


def _lint_job(doc: dict[str, Any]) -> list[str]:
    """A batch/v1 Job's basic shape (no schema here): a pod template with named, imaged containers."""
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return ["spec: a Job needs a spec"]
    pod = ((spec.get("template") or {}).get("spec")) if isinstance(spec.get("template"), dict) else None
    if not isinstance(pod, dict):
        return ["spec.template.spec: a Job needs a pod template"]
    errs: list[str] = []
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        errs.append("spec.template.spec.containers: at least one container is required")
        containers = []
    for i, c in enumerate(containers):
        if not isinstance(c, dict) or not c.get("name") or not c.get("image"):
            errs.append(f"spec.template.spec.containers[{i}]: name and image are required")
    restart = pod.get("restartPolicy")
    if restart not in ("Never", "OnFailure"):
        errs.append(f"spec.template.spec.restartPolicy: {restart!r}: a Job's must be Never or OnFailure")
    if spec.get("podFailurePolicy") and restart != "Never":
        errs.append("spec.podFailurePolicy needs restartPolicy Never")
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        if key in spec and (not isinstance(spec[key], int) or spec[key] < 0):
            errs.append(f"spec.{key} must be a non-negative integer")
    return errs + _lint_volumes(pod, "spec.template.spec", knative=False)


def _lint_container(c: dict[str, Any], where: str, budget: tuple[int, int] | None, key: str) -> list[str]:
    errs: list[str] = []
    ports = [p.get("containerPort") for p in c.get("ports") or []]
    if len(ports) > 1:
        errs.append(f"{where}.ports: Knative allows one port per container")
    for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = c.get(probe_name)
        if not isinstance(probe, dict):
            continue
        for handler in ("httpGet", "tcpSocket", "grpc"):
            h = probe.get(handler)
            # Port 0 or "" is the unset IntOrString (what `kn --probe-readiness http:::/health` writes).
            if isinstance(h, dict) and h.get("port") not in (None, 0, ""):
                expected = ports[0] if ports else 8080
                if h["port"] != expected:
                    errs.append(f"{where}.{probe_name}.{handler}.port {h['port']} must be absent or "
                                f"equal to the container port {expected}")
    resources = c.get("resources") or {}
    req, lim = resources.get("requests") or {}, resources.get("limits") or {}
    try:
        for res, parse in (("cpu", cpu_millis), ("memory", mem_bytes)):
            if res in req and res in lim and parse(req[res]) > parse(lim[res]):
                errs.append(f"{where}.resources: {res} request {req[res]} > limit {lim[res]}")
            if budget is None:
                continue
            cap = budget[0] if res == "cpu" else budget[1]
            # Memory is a hard cap: its limit is the budget. CPU is compressible: the request (what
            # the scheduler reserves) is the budget, the limit may burst to one core so a cold
            # start's imports are not throttled five-fold (knative/README.md, "Resources").
            lim_cap = max(cap, BURST_CPU_MILLIS) if res == "cpu" else cap
            if res not in lim:
                errs.append(f"{where}.resources.limits.{res} missing (seed budget for {key})")
            elif parse(lim[res]) > lim_cap:
                errs.append(f"{where}.resources.limits.{res} {lim[res]} exceeds the seed budget for {key}")
            if res in req and parse(req[res]) > cap:
                errs.append(f"{where}.resources.requests.{res} {req[res]} exceeds the seed budget for {key}")
    except ValueError as exc:
        errs.append(f"{where}.resources: {exc}")
    return errs


def lint(doc: dict[str, Any]) -> list[str]:
    """Webhook-only rules the CRD schema cannot express."""
    errs = _lint_metadata(doc.get("metadata"), "metadata")
    if doc.get("kind") == "Service" and str(doc.get("apiVersion", "")).startswith("serving.knative.dev/"):
        errs += _lint_service(doc)
    if doc.get("kind") == "Job" and doc.get("apiVersion") == "batch/v1":
        errs += _lint_job(doc)
    return errs


# --------------------------------------------------------------------------- driver


def iter_yaml_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every *.yaml / *.yml under the given files or folders, sorted."""
    for p in paths:
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix in {".yaml", ".yml"} and q.is_file())
        else:
            yield p


def validate_document(
    doc: Any, validators: dict[tuple[str, str, str], jsonschema.Draft4Validator]
) -> tuple[list[str], str | None]:
    """Return (errors, skip-reason) for one parsed YAML document."""
    if not isinstance(doc, dict):
        return ["document is not a mapping"], None
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind are required"], None
    group, _, version = api_version.rpartition("/")
    if group == KUSTOMIZE_GROUP:
        return [], "kustomization (not a cluster object)"
    if api_version in SKIPPED_GROUPS:
        shape = " and Job shape" if (api_version, kind) == ("batch/v1", "Job") else ""
        return lint(doc), f"built-in kind {api_version} {kind}: no CRD schema here, metadata lint{shape} only"
    validator = validators.get((group, version, kind))
    if validator is None:
        return [f"no CRD schema for {api_version} {kind}"], None
    errs = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        loc = ".".join(str(p) for p in e.absolute_path) or "<root>"
        errs.append(f"{loc}: {e.message}")
    return errs + lint(doc), None


def validate_paths(paths: Iterable[Path], crd_dir: Path, strict: bool = True) -> Report:
    """Validate every YAML document under the given paths."""
    validators = load_crds(crd_dir, strict)
    report = Report()
    for path in iter_yaml_files(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            report.errors.append(Finding(str(path), "-", f"YAML parse error: {exc}"))
            continue
        for i, doc in enumerate(d for d in docs if d is not None):
            label = f"#{i} {doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}" \
                if isinstance(doc, dict) else f"#{i}"
            errs, skip = validate_document(doc, validators)
            report.checked += 1
            report.errors += [Finding(str(path), label, m) for m in errs]
            if skip:
                report.skipped.append(Finding(str(path), label, skip))
    return report


STANDALONE_OVERLAYS = ("experiments",)  # applied on purpose (kubectl apply -k knative/experiments)


def kustomization_coverage(knative_dir: Path) -> tuple[list[str], list[str]]:
    """(YAML files under knative_dir not reachable from its kustomization or a stand-alone overlay's,
    listed paths that don't exist)."""
    listed: set[Path] = set()
    dangling: list[str] = []

    def walk(kdir: Path) -> None:
        kfile = kdir / "kustomization.yaml"
        data = yaml.safe_load(kfile.read_text()) or {}
        listed.add(kfile.resolve())
        for entry in data.get("resources") or []:
            target = (kdir / entry).resolve()
            if target.is_dir() and (target / "kustomization.yaml").is_file():
                walk(target)
            elif target.is_file():
                listed.add(target)
            else:
                dangling.append(str(kdir / entry))

    walk(knative_dir)
    for overlay in STANDALONE_OVERLAYS:
        if (knative_dir / overlay / "kustomization.yaml").is_file():
            walk(knative_dir / overlay)
    for overlay in sorted(knative_dir.glob("overlays/*/kustomization.yaml")):  # roots of their own
        walk(overlay.parent)
    missing = [
        str(p.relative_to(knative_dir)) for p in iter_yaml_files([knative_dir]) if p.resolve() not in listed
    ]
    return missing, dangling


def default_crd_dir(repo_root: Path) -> Path:
    """$ZEROREC_SHARED_DIR/knative-crds, else ../shared/knative-crds beside the repo."""
    import os

    shared = os.environ.get("ZEROREC_SHARED_DIR")
    base = Path(shared) if shared else repo_root.parent / "shared"
    return base / "knative-crds"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("knative")])
    parser.add_argument("--crds", type=Path, default=None, help="folder of CRD YAMLs")
    parser.add_argument("--no-strict", action="store_true", help="allow unknown fields")
    args = parser.parse_args(argv)
    crd_dir = args.crds or default_crd_dir(Path.cwd())
    if not crd_dir.is_dir():
        print(f"CRD folder not found: {crd_dir}", file=sys.stderr)
        return 2
    report = validate_paths(args.paths, crd_dir, strict=not args.no_strict)
    for f in report.skipped:
        print(f"SKIP {f.path} {f.doc}: {f.message}")
    for f in report.errors:
        print(f"FAIL {f.path} {f.doc}: {f.message}")
    print(f"{report.checked} documents, {len(report.errors)} errors")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
