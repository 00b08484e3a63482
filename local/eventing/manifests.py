"""Read the knative/ manifests the cluster uses and turn them into what the local emulators need.

Sinks: a `ref` to a serving.knative.dev Service `NAME` becomes `http://127.0.0.1:<port>` from the
port map of ARCHITECTURE.md, unless `ZEROREC_SINK_<NAME>` (upper case, `-` -> `_`) or an explicit
override gives a URL; a `ref` to a KafkaSink becomes its topic; a bare `uri` is used as it is.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from zerorec.errors import InvalidInputError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MANIFESTS = REPO / "knative"

# Local port of each function (ARCHITECTURE.md).
PORTS: dict[str, int] = {
    "recall": 8081,
    "ranking": 8082,
    "reranking": 8083,
    "user": 8084,
    "item": 8085,
    "behavior": 8086,
    "consumer": 8087,
    "worker": 8088,
    "model-training": 8091,
    "feature-engineering": 8092,
    "vector-generation": 8093,
    "flink-realtime": 8094,
    "recommender": 10071,
    "dashboard": 8095,
}
MAX_RETRY = 100
MAX_BACKOFF_S = 60.0
DEFAULT_TIMEOUT_S = 30.0
_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> float:
    """ISO 8601 duration (`PT0.5S`, `PT1M`, `P1DT2H`) in seconds."""
    match = _DURATION.match(text or "")
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise InvalidInputError(f"not an ISO 8601 duration: {text!r}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


@dataclass(frozen=True)
class Sink:
    """Where events go: an HTTP URL or (for a KafkaSink) a topic."""

    url: str | None = None
    topic: str | None = None

    def __str__(self) -> str:
        return self.url or f"kafka://{self.topic}"


@dataclass(frozen=True)
class Delivery:
    """A DeliverySpec: retries after the first attempt, backoff, per-request timeout, dead letters."""

    retry: int = 0
    backoff_policy: str = "exponential"
    backoff_delay_s: float = 0.2
    timeout_s: float = DEFAULT_TIMEOUT_S
    dead_letter: Sink | None = None

    def backoff_s(self, retry_number: int) -> float:
        """Wait before retry `retry_number` (1-based): delay*2^(n-1) exponential, delay*n linear."""
        if self.backoff_policy == "linear":
            delay = self.backoff_delay_s * retry_number
        else:
            delay = self.backoff_delay_s * 2 ** (retry_number - 1)
        return min(delay, MAX_BACKOFF_S)


@dataclass(frozen=True)
class KafkaSourceSpec:
    name: str
    namespace: str
    topics: tuple[str, ...]
    consumer_group: str
    sink: Sink
    delivery: Delivery = field(default_factory=Delivery)
    initial_offset: str = "latest"
    ordering: str = "ordered"
    ce_overrides: Mapping[str, str] = field(default_factory=dict)
    # Local dispatcher only (annotation zerorec.dev/local-delivery: single|batch): "batch" sends
    # application/cloudevents-batch+json requests of up to local_batch_size events (throughput mode);
    # the real KafkaSource ignores the annotation and always delivers one event per request.
    local_delivery: str = "single"
    local_batch_size: int = 100


LOCAL_DELIVERY_ANNOTATION = "zerorec.dev/local-delivery"
LOCAL_BATCH_SIZE_ANNOTATION = "zerorec.dev/local-batch-size"


@dataclass(frozen=True)
class PingSourceSpec:
    name: str
    namespace: str
    schedule: str
    sink: Sink
    timezone: str = "UTC"
    content_type: str | None = None
    data: bytes = b""
    ce_overrides: Mapping[str, str] = field(default_factory=dict)


def load_documents(paths: Iterable[str | Path] = (DEFAULT_MANIFESTS,)) -> list[dict[str, Any]]:
    """Every YAML document under `paths` (files or folders, recursively), in path order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.y*ml") if p.name != "kustomization.yaml")
        elif path.is_file():
            files.append(path)
        else:
            raise InvalidInputError(f"no such manifest file or folder: {path}")
    docs: list[dict[str, Any]] = []
    for file in files:
        with file.open(encoding="utf-8") as handle:
            docs += [d for d in yaml.safe_load_all(handle) if isinstance(d, dict) and "kind" in d]
    return docs


def _env_key(name: str) -> str:
    return "ZEROREC_SINK_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


class SinkResolver:
    """Maps a Destination (`ref` and/or `uri`) to a local Sink."""

    def __init__(
        self,
        docs: Iterable[Mapping[str, Any]] = (),
        overrides: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kafka_sinks = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "KafkaSink"}
        self.overrides = dict(overrides or {})
        self.host = host
        self.env = os.environ if env is None else env

    def service_url(self, name: str) -> str:
        """Local URL of the Knative Service `name`."""
        if name in self.overrides:
            return self.overrides[name]
        if _env_key(name) in self.env:
            return self.env[_env_key(name)]
        if name not in PORTS:
            raise InvalidInputError(f"no local port for Service {name!r}; set {_env_key(name)}")
        return f"http://{self.host}:{PORTS[name]}"

    def resolve(self, destination: Mapping[str, Any] | None, where: str) -> Sink:
        """Resolve a Destination; InvalidInputError for kinds the emulator does not know."""
        if not destination:
            raise InvalidInputError(f"{where}: no sink")
        ref, uri = destination.get("ref"), destination.get("uri")
        if ref is None:
            if not uri:
                raise InvalidInputError(f"{where}: sink has neither ref nor uri")
            return Sink(url=str(uri))
        kind, name = ref.get("kind"), ref.get("name")
        if kind == "Service" and str(ref.get("apiVersion", "serving.knative.dev/v1")).startswith(
            "serving.knative"
        ):
            base = self.service_url(name)
            return Sink(url=base.rstrip("/") + "/" + str(uri).lstrip("/") if uri else base)
        if kind == "KafkaSink":
            sink = self.kafka_sinks.get(name)
            if sink is None:
                raise InvalidInputError(f"{where}: KafkaSink {name!r} not found in the manifests")
            return Sink(topic=str(sink["spec"]["topic"]))
        raise InvalidInputError(f"{where}: the local emulator cannot deliver to {kind} {name!r}")


def _delivery(spec: Mapping[str, Any] | None, resolver: SinkResolver, where: str) -> Delivery:
    spec = spec or {}
    retry = int(spec.get("retry", 0))
    if not 0 <= retry <= MAX_RETRY:
        raise InvalidInputError(f"{where}: delivery.retry must be 0..{MAX_RETRY}")
    policy = str(spec.get("backoffPolicy", "exponential"))
    if policy not in ("exponential", "linear"):
        raise InvalidInputError(f"{where}: unknown backoffPolicy {policy!r}")
    dead_letter = spec.get("deadLetterSink")
    return Delivery(
        retry=retry,
        backoff_policy=policy,
        backoff_delay_s=parse_duration(spec["backoffDelay"]) if "backoffDelay" in spec else 0.2,
        timeout_s=parse_duration(spec["timeout"]) if "timeout" in spec else DEFAULT_TIMEOUT_S,
        dead_letter=resolver.resolve(dead_letter, where + " deadLetterSink") if dead_letter else None,
    )


def _local_delivery(annotations: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The local dispatcher's delivery mode from the KafkaSource's annotations."""
    mode = str(annotations.get(LOCAL_DELIVERY_ANNOTATION, "single"))
    if mode not in ("single", "batch"):
        raise InvalidInputError(f"{where}: {LOCAL_DELIVERY_ANNOTATION} must be single or batch, got {mode!r}")
    size = str(annotations.get(LOCAL_BATCH_SIZE_ANNOTATION, "100"))
    if not size.isdigit() or not 1 <= int(size) <= 1000:
        raise InvalidInputError(f"{where}: {LOCAL_BATCH_SIZE_ANNOTATION} must be 1..1000, got {size!r}")
    return {"local_delivery": mode, "local_batch_size": int(size)}


def _overrides(spec: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((spec.get("ceOverrides") or {}).get("extensions") or {}).items()}


def kafka_sources(docs: Iterable[Mapping[str, Any]], resolver: SinkResolver) -> list[KafkaSourceSpec]:
    """The KafkaSources among `docs`."""
    result = []
    for doc in docs:
        if doc.get("kind") != "KafkaSource":
            continue
        meta, spec = doc["metadata"], doc["spec"]
        where = f"KafkaSource {meta['name']}"
        result.append(
            KafkaSourceSpec(
                name=meta["name"],
                namespace=meta.get("namespace", "default"),
                topics=tuple(spec["topics"]),
                consumer_group=spec.get("consumerGroup") or f"knative-kafkasource-{meta['name']}",
                sink=resolver.resolve(spec.get("sink"), where),
                delivery=_delivery(spec.get("delivery"), resolver, where),
                initial_offset=spec.get("initialOffset", "latest"),
                ordering=spec.get("ordering", "ordered"),
                ce_overrides=_overrides(spec),
                **_local_delivery(meta.get("annotations") or {}, where),
            )
        )
    return result


def ping_sources(docs: Iterable[Mapping[str, Any]], resolver: SinkResolver) -> list[PingSourceSpec]:
    """The PingSources among `docs` (data from `data` or `dataBase64`)."""
    result = []
    for doc in docs:
        if doc.get("kind") != "PingSource":
            continue
        meta, spec = doc["metadata"], doc["spec"]
        where = f"PingSource {meta['name']}"
        if "dataBase64" in spec:
            data = base64.b64decode(spec["dataBase64"], validate=True)
        else:
            data = str(spec.get("data", "")).encode()
        result.append(
            PingSourceSpec(
                name=meta["name"],
                namespace=meta.get("namespace", "default"),
                schedule=spec.get("schedule", "* * * * *"),
                sink=resolver.resolve(spec.get("sink"), where),
                timezone=spec.get("timezone", "UTC"),
                content_type=spec.get("contentType"),
                data=data,
                ce_overrides=_overrides(spec),
            )
        )
    return result
