"""Richer feedback over the real servers: behavior -> Kafka -> local KafkaSource dispatcher -> consumer
-> Redis, as separate processes, then recall on a tiny trained model reading that Redis state.

Per-kind weights from ZEROREC_FEEDBACK_WEIGHTS reach the user's category affinity; a dislike and a
hide join the user's negative list (no affinity, no history); recall then never offers the
disliked item and demotes its item-CF neighbours."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pipeline_helpers import REPO, click
from zerorec.bench_ingest import Proc, bench_manifest, infra_env, start_dispatcher, start_function
from zerorec.realtime import ItemRecord, item_upsert_writes, user_state_from, user_state_reads
from zerorec.settings import Settings

pytestmark = pytest.mark.integration
WEIGHTS = "purchase=7,view=0.25"


@pytest.fixture(scope="module")
def loop(
    real_settings: Settings, redis_server: str, kafka_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    from zerorec.storage.bus_kafka import KafkaEventBus
    from zerorec.storage.kv_redis import RedisKVStore

    run = os.urandom(4).hex()
    topic, dlq, group, category = f"fb.{run}.behavior", f"fb.{run}.dlq", f"fb-{run}", f"fbc{run}"
    bus = KafkaEventBus.from_settings(real_settings)
    bus.ensure_topics([topic], partitions=2)
    bus.ensure_topics([dlq])
    kv = RedisKVStore.from_settings(real_settings)
    kv.write(
        [op for n in range(3) for op in item_upsert_writes(ItemRecord(f"{run}i{n}", "t", (category,), 1.7e9))]
    )
    env = infra_env(real_settings)
    env.update({"ZEROREC_TOPIC_BEHAVIOR": topic, "ZEROREC_FEEDBACK_WEIGHTS": WEIGHTS})
    log_dir = tmp_path_factory.mktemp("feedback")
    manifest = log_dir / "sources.yaml"
    manifest.write_text(bench_manifest(topic, group, dlq))
    procs: list[Proc] = []
    try:
        procs.append(start_function("behavior", env, log_dir))
        procs.append(start_function("consumer", env, log_dir))
        procs.append(start_dispatcher(manifest, procs[1].url + "/", env, log_dir))
        yield {"run": run, "category": category, "kv": kv, "behavior": procs[0], "dispatcher": procs[2]}
    finally:
        for proc in reversed(procs):
            proc.stop()
        kv.close()
        bus.close()


def _post(loop: dict[str, Any], events: list[dict[str, Any]]) -> None:
    r = httpx.post(loop["behavior"].url + "/events", json=events, timeout=30)
    assert r.status_code == 202 and r.json()["accepted"] == len(events), r.text


def _state_when(loop: dict[str, Any], user: str, done: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        state = user_state_from(user, loop["kv"].read(user_state_reads(user)))
        if done(state):
            return state
        assert time.monotonic() < deadline, f"not applied: {state}\n{loop['dispatcher'].log_tail()}"
        time.sleep(0.1)


def test_configured_weights_reach_the_online_state(loop: dict[str, Any]) -> None:
    run, category = loop["run"], loop["category"]
    user = f"{category}-w"
    _post(loop, [click(user, f"{run}i0", kind="view"), click(user, f"{run}i1", kind="purchase")])
    state = _state_when(loop, user, lambda s: len(s.recent_items) == 2)
    assert state.category_affinity == {category: pytest.approx(7.25)}  # 0.25 + 7, not 0.5 + 4


def test_dislike_and_hide_over_kafka_remove_and_demote_in_recall(loop: dict[str, Any]) -> None:
    sys.path.insert(0, str(REPO / "tests" / "functions"))
    from fn_bundles import train_tiny
    from zerorec.api import RecallRequest
    from zerorec.feedback import DEMOTE
    from zerorec.online import RecallStage, ServingModel

    rec, _, _, _ = train_tiny()
    model = ServingModel("recommender", "v-test", rec, {})
    run, category = loop["run"], loop["category"]
    user = f"{category}-neg"
    _post(loop, [click(user, f"{run}i2")])  # a user with state: recall reads it from Redis
    _state_when(loop, user, lambda s: s.recent_items == [f"{run}i2"])
    stage = RecallStage(model, loop["kv"])
    before = stage.recall(RecallRequest(user_id=user, n=80))["candidates"]
    disliked, hidden = before[0]["item_id"], before[1]["item_id"]

    _post(loop, [click(user, disliked, kind="dislike"), click(user, hidden, kind="hide")])
    state = _state_when(loop, user, lambda s: len(s.negative_items) == 2)
    assert state.negative_items == [hidden, disliked] and state.recent_items == [f"{run}i2"]
    assert {disliked, hidden} <= set(state.seen_items)
    assert state.category_affinity == {category: pytest.approx(1.0)}  # the click alone

    after = stage.recall(RecallRequest(user_id=user, n=80))["candidates"]
    ids = {c["item_id"] for c in after}
    assert disliked not in ids and hidden not in ids
    assert any(DEMOTE in c for c in after), "no neighbour of the disliked items demoted"
