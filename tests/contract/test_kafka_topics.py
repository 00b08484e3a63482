"""knative/eventing/kafka-topics.yaml: the topics' partitions and retention, and applying them to a
real broker (created, then updated in place)."""

from __future__ import annotations

from dataclasses import replace

from zerorec.kafka_topics import apply_topics, describe, load_topic_specs
from zerorec.settings import Settings


def test_the_manifest_bounds_every_topic() -> None:
    specs = {s.name: s for s in load_topic_specs()}
    names = Settings()
    assert set(specs) == {names.topic_behavior, names.topic_items, names.topic_dead_letter}
    behavior = specs[names.topic_behavior]
    # The log must outlive the export interval (1 h) and an outage of a day, bounded in bytes.
    assert int(behavior.config["retention.ms"]) >= 2 * 24 * 3600 * 1000
    assert 0 < int(behavior.config["retention.bytes"]) <= 64 * 2**30
    assert behavior.partitions >= 8  # the consumer scales out per partition
    for spec in specs.values():
        policy = spec.config["cleanup.policy"]
        assert policy == "compact" or int(spec.config["retention.bytes"]) > 0, spec


def test_apply_creates_then_updates(kafka_server: str, namespace: str) -> None:
    spec = replace(load_topic_specs()[0], name=f"{namespace}.behavior", partitions=2)
    assert apply_topics(kafka_server, [spec]) == {spec.name: "created"}
    got = describe(kafka_server, spec.name)
    assert got["partitions"] == 2
    assert got["config"]["retention.ms"] == spec.config["retention.ms"]
    assert got["config"]["retention.bytes"] == spec.config["retention.bytes"]
    shorter = replace(spec, partitions=3, config={**spec.config, "retention.ms": "3600000"})
    assert apply_topics(kafka_server, [shorter]) == {spec.name: "updated"}
    got = describe(kafka_server, spec.name)
    assert got["partitions"] == 3 and got["config"]["retention.ms"] == "3600000"
