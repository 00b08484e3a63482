"""zerorec.ctr: impressions and clicks carrying a recommendation id, counted exactly once by the
consumer, overall / per channel / per position / per variant; the ingest routing of impressions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from zerorec.cloudevents_io import new_event
from zerorec.consumer import EventApplier
from zerorec.ctr import (
    IMPRESSION_TYPE,
    Rate,
    Served,
    read_ctr,
    read_item_ctr,
    read_served,
    served_writes,
)
from zerorec.errors import InvalidInputError
from zerorec.experiments import Experiment, experiment_report, format_report, parse_experiment
from zerorec.ingest import BEHAVIOR_TYPE, BehaviorIngest
from zerorec.realtime import user_state_from, user_state_reads
from zerorec.storage.bus_memory import MemoryEventBus
from zerorec.storage.kv_memory import MemoryKVStore

NOW = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
SERVED = Served("r1", "u1", "default/a", (("i1", "als"), ("i2", "hot"), ("i3", "als")), {"ranking": "v7"})


def impression(rec: str = "r1", **extra: Any) -> dict[str, Any]:
    return {"kind": "impression", "user_id": "u1", "recommendation_id": rec, "timestamp": NOW, **extra}


def click(item: str, rec: str = "r1", kind: str = "click") -> dict[str, Any]:
    return {"kind": kind, "user_id": "u1", "item_id": item, "timestamp": NOW, "recommendation_id": rec}


@pytest.fixture
def kv() -> MemoryKVStore:
    store = MemoryKVStore()
    store.write(served_writes(SERVED, 600))
    return store


def apply(applier: EventApplier, event_type: str, data: dict[str, Any], event_id: str) -> bool:
    return applier.apply(new_event(event_type, data, source="/test", event_id=event_id)).applied


def test_served_record_round_trip_and_ttl_off(kv: MemoryKVStore) -> None:
    assert read_served(kv, "r1") == SERVED
    assert read_served(kv, "nope") is None
    assert served_writes(SERVED, 0) == []
    assert len(SERVED.encode()) < 120  # the memory bound the module docstring states per answer


def test_impressions_and_clicks_count_once_by_channel_position_variant(kv: MemoryKVStore) -> None:
    applier = EventApplier(kv, category_cache_s=0)
    assert apply(applier, IMPRESSION_TYPE, impression(), "e1")
    assert not apply(applier, IMPRESSION_TYPE, impression(), "e1")  # redelivery: no double count
    assert apply(applier, BEHAVIOR_TYPE, click("i3"), "e2")
    assert not apply(applier, BEHAVIOR_TYPE, click("i3"), "e2")
    snap = read_ctr(kv)
    assert (snap.overall.impressions, snap.overall.clicks) == (3, 1)
    assert snap.by_channel == {"als": Rate(2, 1), "hot": Rate(1, 0)}
    assert snap.by_position == {1: Rate(1, 0), 2: Rate(1, 0), 3: Rate(1, 1)}
    assert snap.by_variant == {"default/a": Rate(3, 1)}
    assert snap.variant_models == {"default/a": {"ranking": "v7"}}
    assert snap.series[-1][1] == Rate(3, 1)  # this hour's bucket
    assert snap.events_by_hour[-1] == {"click": 1}  # event rates: every behavior event, by kind
    assert (read_item_ctr(kv, "i3"), read_item_ctr(kv, "i2")) == (Rate(1, 1), Rate(1, 0))
    # The click is also a real interaction: it reached the user's state as before.
    assert user_state_from("u1", kv.read(user_state_reads("u1"))).recent_items == ["i3"]


def test_partial_impressions_lost_and_unmatched_clicks(kv: MemoryKVStore) -> None:
    applier = EventApplier(kv, category_cache_s=0)
    apply(applier, IMPRESSION_TYPE, impression(positions=[2, 3, 99]), "e1")  # 99: not in the answer
    apply(applier, IMPRESSION_TYPE, impression(rec="expired"), "e2")
    apply(applier, BEHAVIOR_TYPE, click("i9"), "e3")  # not in that answer
    apply(applier, BEHAVIOR_TYPE, click("i1", rec="expired"), "e4")
    apply(applier, BEHAVIOR_TYPE, click("i2", kind="view"), "e5")  # a view is no click
    snap = read_ctr(kv)
    assert (snap.overall.impressions, snap.overall.clicks) == (2, 0)
    assert (snap.impressions_lost, snap.clicks_lost, snap.clicks_unmatched) == (1, 1, 1)
    assert snap.by_position == {2: Rate(1, 0), 3: Rate(1, 0)}


def test_batched_delivery_counts_the_same(kv: MemoryKVStore) -> None:
    applier = EventApplier(kv, category_cache_s=0)
    events = [
        new_event(IMPRESSION_TYPE, impression(), source="/t", event_id="b1"),
        new_event(BEHAVIOR_TYPE, click("i1"), source="/t", event_id="b2"),
        new_event(IMPRESSION_TYPE, impression(), source="/t", event_id="b1"),  # duplicate in batch
    ]
    results = applier.apply_batch(events)
    assert [r["applied"] for r in results] == [True, True, False]
    assert results[0]["type"] == IMPRESSION_TYPE
    assert read_ctr(kv).overall == Rate(3, 1)


def test_bad_impression_is_refused(kv: MemoryKVStore) -> None:
    applier = EventApplier(kv, category_cache_s=0)
    bad = impression()
    del bad["recommendation_id"]
    with pytest.raises(InvalidInputError, match="recommendation_id"):
        apply(applier, IMPRESSION_TYPE, bad, "x1")


def test_ingest_routes_impressions_and_rejects_bad_ones() -> None:
    bus = MemoryEventBus()
    ingest = BehaviorIngest(bus, "t.behavior")
    result = ingest.accept_payloads([impression(), click("i1"), impression(positions=[0])])
    assert result.ids[0] and result.ids[1] and result.ids[2] is None
    assert "positions" in result.errors[0]["reason"]
    types = [dict(r.headers)["ce_type"] for r in bus.consumer(["t.behavior"], "g").poll(10, 1.0)]
    assert types == [IMPRESSION_TYPE.encode(), BEHAVIOR_TYPE.encode()]


def test_wilson_interval_is_the_textbook_one() -> None:
    low, high = Rate(100, 10).interval()
    assert (round(low, 4), round(high, 4)) == (0.0552, 0.1744)  # Wilson 95% for 10 / 100
    assert Rate(0, 0).interval() is None and Rate(0, 0).ctr is None


def test_assignment_is_stable_and_follows_the_weights() -> None:
    exp = Experiment.model_validate(
        {"name": "e1", "variants": [{"name": "a", "weight": 3}, {"name": "b", "weight": 1}]}
    )
    users = [f"u{k}" for k in range(8000)]
    first = [exp.assign(u).name for u in users]
    assert first == [exp.assign(u).name for u in users]
    share_a = first.count("a") / len(first)
    assert 0.72 < share_a < 0.78
    other = Experiment.model_validate({**exp.model_dump(), "name": "e2"})  # another salt, other split
    assert [other.assign(u).name for u in users] != first


def test_bad_experiment_setting_says_why() -> None:
    from zerorec.experiments import require_valid_experiment
    from zerorec.settings import RefusedToStart, Settings

    with pytest.raises(RefusedToStart, match="refusing to start the recommender: ZEROREC_EXPERIMENT"):
        require_valid_experiment(Settings(experiment="{not json"))
    require_valid_experiment(Settings(experiment=""))
    assert parse_experiment("") is None
    with pytest.raises(InvalidInputError, match="ZEROREC_EXPERIMENT"):
        parse_experiment('{"name": "x", "variants": []}')
    with pytest.raises(InvalidInputError, match="distinct"):
        parse_experiment('{"name": "x", "variants": [{"name": "a"}, {"name": "a"}]}')


def test_report_has_ctr_interval_and_offline_metrics(kv: MemoryKVStore, tmp_path: Any) -> None:
    from zerorec.storage.objects_local import LocalObjectStore

    objects = LocalObjectStore(tmp_path)
    objects.put("models/recommender/v7/manifest.json", b'{"metrics": {"validation_candidate_recall": 0.85}}')
    applier = EventApplier(kv, category_cache_s=0)
    apply(applier, IMPRESSION_TYPE, impression(), "e1")
    apply(applier, BEHAVIOR_TYPE, click("i2"), "e2")
    report = experiment_report(kv, objects)
    (row,) = report["variants"]
    assert row["variant"] == "default/a" and row["impressions"] == 3 and row["clicks"] == 1
    assert row["ci95"][0] < 1 / 3 < row["ci95"][1]
    assert row["offline_metrics"] == {"validation_candidate_recall": 0.85}
    text = format_report(report)
    assert "default/a" in text and "0.3333" in text and "validation_candidate_recall=0.8500" in text


@pytest.mark.integration
def test_counts_once_on_redis(redis_server: str, real_settings: Any, namespace: str) -> None:
    """The same ops through the Redis backend (other slots than the user's record: rec, ctr, ictr)."""
    from zerorec.storage.kv_redis import RedisKVStore

    kv = RedisKVStore.from_settings(real_settings)
    served = Served(f"{namespace}r", f"{namespace}u", f"{namespace}-v", (("i1", "als"), ("i2", "hot")))
    kv.write(served_writes(served, 60))
    before = read_ctr(kv).overall
    applier = EventApplier(kv, category_cache_s=0)
    imp = {**impression(rec=served.recommendation_id), "user_id": served.user_id}
    clk = {**click("i2", rec=served.recommendation_id), "user_id": served.user_id}
    assert apply(applier, IMPRESSION_TYPE, imp, f"{namespace}-e1")
    assert not apply(applier, IMPRESSION_TYPE, imp, f"{namespace}-e1")
    assert apply(applier, BEHAVIOR_TYPE, clk, f"{namespace}-e2")
    assert not apply(applier, BEHAVIOR_TYPE, clk, f"{namespace}-e2")
    snap = read_ctr(kv)
    assert (snap.overall.impressions - before.impressions, snap.overall.clicks - before.clicks) == (2, 1)
    assert snap.by_variant[f"{namespace}-v"] == Rate(2, 1)
    assert read_served(kv, served.recommendation_id) == served
    kv.close()
