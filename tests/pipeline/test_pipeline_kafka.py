"""The whole loop on the real servers: behavior -> Kafka -> local KafkaSource dispatcher -> consumer ->
Redis, as separate processes, and its faults: consumer SIGKILL, broker restart, malformed records."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pipeline_helpers import REPO, click
from zerorec.bench_ingest import (
    Proc,
    bench_manifest,
    free_port,
    infra_env,
    start_dispatcher,
    start_function,
)
from zerorec.cloudevents_io import from_kafka_record
from zerorec.ingest import behavior_event_ids
from zerorec.realtime import (
    CATEGORIES,
    ItemRecord,
    behavior_token,
    item_upsert_writes,
    user_key,
    user_state_from,
    user_state_reads,
)
from zerorec.settings import Settings
from zerorec.storage.bus import OutgoingRecord
from zerorec.storage.kv import RecordGet, TokenSeen

pytestmark = pytest.mark.integration


@dataclass
class Pipeline:
    settings: Settings
    topic: str
    dlq: str
    category: str
    behavior: Proc
    consumer: Proc
    dispatcher: Proc
    env: dict[str, str]
    log_dir: Path
    consumer_port: int
    kv: Any
    bus: Any
    user_of: dict[str, str] = field(default_factory=dict)  # event id -> user, of every posted event

    def post(self, events: list[dict[str, Any]], timeout: float = 30) -> httpx.Response:
        for event, event_id in zip(events, behavior_event_ids(events), strict=True):
            self.user_of[event_id] = event["user_id"]
        return httpx.post(self.behavior.url + "/events", json=events, timeout=timeout)

    def restart_consumer(self) -> None:
        self.consumer = start_function("consumer", self.env, self.log_dir, port=self.consumer_port)

    def applications(self, users: list[str]) -> int:
        records = self.kv.read([RecordGet(user_key(u)) for u in users])
        return round(sum(r.counters.get(CATEGORIES, {}).get(self.category, 0.0) for r in records))

    def missing(self, ids: list[str]) -> list[str]:
        found = self.kv.read([TokenSeen(behavior_token(self.user_of[i], i)) for i in ids])
        return [i for i, v in zip(ids, found, strict=True) if not v]

    def wait_applied(self, ids: list[str], users: list[str], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.missing(ids) or self.applications(users) < len(ids):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self.missing(ids))} of {len(ids)} events not applied; "
                    f"dispatcher log:\n{self.dispatcher.log_tail()}"
                )
            time.sleep(0.2)

    def dead_letters(self, group: str) -> list[Any]:
        consumer = self.bus.consumer([self.dlq], group)
        try:
            out, deadline = [], time.monotonic() + 8
            while time.monotonic() < deadline:
                got = consumer.poll(100, 0.5)
                out += got
                if out and not got:
                    break
            return out
        finally:
            consumer.close()


@pytest.fixture(scope="module")
def pipeline(
    real_settings: Settings, redis_server: str, kafka_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    settings = real_settings
    from zerorec.storage.bus_kafka import KafkaEventBus
    from zerorec.storage.kv_redis import RedisKVStore

    run = os.urandom(4).hex()
    topic, dlq, group, category = f"it.{run}.behavior", f"it.{run}.dlq", f"it-{run}", f"itc{run}"
    bus = KafkaEventBus.from_settings(settings)
    bus.ensure_topics([topic], partitions=2)
    bus.ensure_topics([dlq])
    kv = RedisKVStore.from_settings(settings)
    ops = []
    for n in range(20):
        ops += item_upsert_writes(ItemRecord(f"{run}i{n}", "t", (category,), time.time()))
    kv.write(ops)
    env = infra_env(settings)
    env.update(
        {"ZEROREC_TOPIC_BEHAVIOR": topic, "ZEROREC_CONNECT_TIMEOUT_S": "1", "ZEROREC_REQUEST_TIMEOUT_S": "2"}
    )
    log_dir = tmp_path_factory.mktemp("pipeline")
    manifest = log_dir / "sources.yaml"
    manifest.write_text(bench_manifest(topic, group, dlq))
    procs: list[Proc] = []
    try:
        behavior = start_function("behavior", env, log_dir)
        procs.append(behavior)
        port = free_port()
        consumer = start_function("consumer", env, log_dir, port=port)
        procs.append(consumer)
        dispatcher = start_dispatcher(manifest, consumer.url + "/", env, log_dir)
        procs.append(dispatcher)
        p = Pipeline(
            settings, topic, dlq, category, behavior, consumer, dispatcher, env, log_dir, port, kv, bus
        )
        warm_user = f"{category}-warm"  # the dispatcher is up, joined and delivering
        r = p.post([click(warm_user, f"{run}i0")])
        assert r.status_code == 202, r.text
        p.wait_applied(r.json()["ids"], [warm_user], timeout_s=60)
        yield p
        procs.append(p.consumer)
    finally:
        for proc in reversed(procs):
            proc.stop()
        kv.close()
        bus.close()


def _items(p: Pipeline) -> list[str]:
    return [f"{p.topic.split('.')[1]}i{n}" for n in range(20)]


def test_the_loop_closes_click_is_in_the_profile(pipeline: Pipeline) -> None:
    user, item = f"{pipeline.category}-loop", _items(pipeline)[3]
    r = pipeline.post([click(user, item)])
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 30
    while True:
        state = user_state_from(user, pipeline.kv.read(user_state_reads(user)))
        if item in state.seen_items:
            break
        assert time.monotonic() < deadline, pipeline.dispatcher.log_tail()
        time.sleep(0.05)
    assert state.recent_items == [item] and state.category_affinity == {pipeline.category: 1.0}


def test_consumer_sigkill_mid_stream_every_event_applied_exactly_once(pipeline: Pipeline) -> None:
    users = [f"{pipeline.category}-k{n}" for n in range(30)]
    items = _items(pipeline)
    ids: list[str] = []
    for b in range(8):
        batch = [click(users[(b * 100 + n) % 30], items[n % 20]) for n in range(100)]
        r = pipeline.post(batch)
        assert r.status_code == 202, r.text
        ids += r.json()["ids"]
        if b == 2:
            time.sleep(0.2)  # the dispatcher is delivering: kill the consumer under it
            pipeline.consumer.popen.send_signal(signal.SIGKILL)
            pipeline.consumer.popen.wait(10)
    time.sleep(0.5)
    pipeline.restart_consumer()  # well inside the KafkaSource's retries (0.2 s .. 3.2 s, 5 times)
    pipeline.wait_applied(ids, users)
    time.sleep(1.0)  # redeliveries after the restart would show up now
    assert pipeline.missing(ids) == []
    assert pipeline.applications(users) == len(ids)  # no double count


def test_malformed_records_go_to_dead_letters_and_the_stream_goes_on(pipeline: Pipeline) -> None:
    from zerorec.cloudevents_io import new_event, to_kafka_record

    user, item = f"{pipeline.category}-dlq", _items(pipeline)[0]
    malformed = OutgoingRecord(value=b"{}", key=user.encode(), headers=(("ce_specversion", b"1.0"),))
    foreign = OutgoingRecord(value=b'{"hello": "world"}', key=user.encode())
    bad_data = to_kafka_record(
        new_event("dev.zerorec.behavior.v1", {**click(user, item), "kind": "zap"}, source="/x"), key=user
    )
    good = to_kafka_record(new_event("dev.zerorec.behavior.v1", click(user, item), source="/x"), key=user)
    pipeline.bus.publish(pipeline.topic, [malformed, foreign, bad_data, good])
    pipeline.user_of[_id(good)] = user
    pipeline.wait_applied([_id(good)], [user], timeout_s=30)
    letters = pipeline.dead_letters(f"{pipeline.category}-check-dlq")
    mine = [from_kafka_record(r, raw_data=True) for r in letters if r.key == user.encode()]
    assert len(mine) == 3
    assert {e["knativeerrorcode"] for e in mine} == {"400"}
    assert sorted(e["type"] for e in mine) == [
        "dev.knative.kafka.event",
        "dev.knative.kafka.event",
        "dev.zerorec.behavior.v1",
    ]


def _id(record: OutgoingRecord) -> str:
    return dict(record.headers)["ce_id"].decode()


def _infra(*args: str) -> None:
    subprocess.run([str(REPO / "local" / "infra.sh"), *args], check=True, timeout=120, capture_output=True)


def test_broker_restart_no_acknowledged_event_lost_and_fast_503(pipeline: Pipeline) -> None:
    users = [f"{pipeline.category}-b{n}" for n in range(10)]
    items = _items(pipeline)
    accepted: list[str] = []
    refused: list[float] = []
    refused_ids: list[str] = []
    other: list[str] = []
    stop = threading.Event()

    def post_loop() -> None:
        n = 0
        while not stop.is_set():
            batch = [click(users[(n + k) % 10], items[k % 20]) for k in range(20)]
            started = time.monotonic()
            try:
                r = pipeline.post(batch, timeout=30)
            except httpx.HTTPError as exc:
                other.append(repr(exc))
                continue
            if r.status_code == 202:
                accepted.extend(r.json()["ids"])
            elif r.status_code == 503:
                refused.append(time.monotonic() - started)
                refused_ids.extend(behavior_event_ids(batch))
                assert "unavailable" in r.json()["error"]
            else:
                other.append(f"{r.status_code} {r.text[:200]}")
            n += 1
            time.sleep(0.05)

    poster = threading.Thread(target=post_loop)
    poster.start()
    try:
        time.sleep(1.0)
        _infra("stop", "kafka")
        time.sleep(4.0)  # posts during the outage
        _infra("start", "kafka")
        time.sleep(3.0)
    finally:
        stop.set()
        poster.join(60)
    assert other == []
    assert refused, "no post was refused while the broker was down"
    assert max(refused) < 8.0, f"a refusal took {max(refused):.1f} s"
    assert accepted
    pipeline.wait_applied(accepted, users, timeout_s=90)
    # A 503 means "not acknowledged", not "not written": a refused event may arrive, but every
    # event is applied at most once and every acknowledged one exactly once.
    late = set(refused_ids) - set(accepted) - set(pipeline.missing(refused_ids))
    assert pipeline.applications(users) == len(set(accepted)) + len(late)
