"""The Kafka topics of knative/eventing/kafka-topics.yaml (partitions, replication, retention),
applied to a cluster: missing topics are created with them, existing ones get the configs set
(incrementally: configs not named are left alone; partitions are never reduced).

`zerorec kafka-topics [--file F]` runs it against ZEROREC_KAFKA_BOOTSTRAP; the soak applies the
same file to its own broker. A broker with fewer brokers than a topic's replication factor (a
local single-node one) gets the broker count instead, and min.insync.replicas no larger than it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zerorec.errors import BackendUnavailableError, InvalidInputError

REPO = Path(__file__).resolve().parents[2]
TOPICS_FILE = REPO / "knative" / "eventing" / "kafka-topics.yaml"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


def load_topic_specs(path: Path = TOPICS_FILE) -> list[TopicSpec]:
    """The topics of the ConfigMap `zerorec-kafka-topics` in `path` (its data key topics.yaml)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    maps = [d for d in docs if d.get("kind") == "ConfigMap" and "topics.yaml" in (d.get("data") or {})]
    if len(maps) != 1:
        raise InvalidInputError(f"{path}: expected one ConfigMap with data key topics.yaml")
    specs = []
    for entry in yaml.safe_load(maps[0]["data"]["topics.yaml"]) or []:
        try:
            specs.append(
                TopicSpec(
                    str(entry["name"]),
                    int(entry["partitions"]),
                    int(entry["replicationFactor"]),
                    {str(k): str(v) for k, v in (entry.get("config") or {}).items()},
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"{path}: bad topic entry {entry!r}: {exc}") from None
    return specs


def apply_topics(bootstrap: str, specs: Sequence[TopicSpec], timeout_s: float = 15.0) -> dict[str, str]:
    """Create or update each topic; topic -> 'created' | 'updated'."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        NewTopic,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BackendUnavailableError(f"kafka at {bootstrap} unreachable: {exc.args[0].str()}") from exc
    brokers = max(len(meta.brokers), 1)
    out: dict[str, str] = {}
    for spec in specs:
        replicas = min(spec.replication_factor, brokers)
        config = dict(spec.config)
        if "min.insync.replicas" in config:
            config["min.insync.replicas"] = str(min(int(config["min.insync.replicas"]), replicas))
        existing = meta.topics.get(spec.name)
        if existing is None or existing.error is not None:
            fut = admin.create_topics(
                [NewTopic(spec.name, spec.partitions, replicas, config=config)], request_timeout=timeout_s
            )[spec.name]
            try:
                fut.result(timeout=timeout_s)
                out[spec.name] = "created"
                continue
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise InvalidInputError(f"cannot create {spec.name}: {exc.args[0].str()}") from exc
        elif len(existing.partitions) < spec.partitions:
            admin.create_partitions([NewPartitions(spec.name, spec.partitions)])[spec.name].result(timeout_s)
        entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in config.items()]
        resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name, incremental_configs=entries)
        for fut in admin.incremental_alter_configs([resource]).values():
            fut.result(timeout=timeout_s)
        out[spec.name] = "updated"
    return out


def describe(bootstrap: str, topic: str, timeout_s: float = 15.0) -> dict[str, Any]:
    """The topic's partition count and configs as the broker reports them (for checks)."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    meta = admin.list_topics(topic, timeout=timeout_s).topics[topic]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = next(iter(admin.describe_configs([resource]).values())).result(timeout=timeout_s)
    return {"partitions": len(meta.partitions), "config": {k: v.value for k, v in configs.items()}}
