"""zerorec.feedback: per-kind weights, negative feedback in the user's state and in recall, guests."""

from __future__ import annotations

import numpy as np
import pytest
from zerorec.errors import InvalidInputError
from zerorec.feedback import (
    DEMOTE,
    NEGATIVE_QUERY_MAX,
    demoted_score,
    mark_demoted,
    neighbours_of,
    parse_weights,
    training_weights,
)
from zerorec.realtime import (
    CATEGORIES,
    EVENT_WEIGHTS,
    HISTORY,
    NEGATIVE,
    BehaviorEvent,
    behavior_writes,
    user_key,
    user_state_from,
)
from zerorec.settings import Settings
from zerorec.storage.kv import Record, RecordIncr, RecordPush, ZIncr
from zerorec.storage.kv_memory import MemoryKVStore


def test_weights_override_the_defaults() -> None:
    w = parse_weights("view=0.2, purchase=6", EVENT_WEIGHTS)
    assert w["view"] == 0.2 and w["purchase"] == 6.0 and w["click"] == EVENT_WEIGHTS["click"]
    assert parse_weights("", EVENT_WEIGHTS) == dict(EVENT_WEIGHTS)


@pytest.mark.parametrize("bad", ["teleport=1", "view", "view=abc", "view=-1", "view=nan"])
def test_a_bad_weight_is_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(InvalidInputError, match="feedback weight"):
        parse_weights(bad, EVENT_WEIGHTS)


def test_settings_refuse_a_bad_weight_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROREC_FEEDBACK_WEIGHTS", "purchase=lots")
    with pytest.raises(ValueError, match="not a number"):
        Settings()


def test_behavior_writes_use_the_configured_weight() -> None:
    event = BehaviorEvent("u1", "i1", "purchase", 1_700_000_000.0)
    ops = behavior_writes(event, ["c1"], {**EVENT_WEIGHTS, "purchase": 7.0})
    incr = [op for op in ops if isinstance(op, RecordIncr)]
    assert incr == [RecordIncr(user_key("u1"), CATEGORIES, "c1", 7.0, incr[0].maxlen)]


@pytest.mark.parametrize("kind", ["dislike", "hide"])
def test_negative_feedback_only_joins_the_negative_list(kind: str) -> None:
    ops = behavior_writes(BehaviorEvent("u1", "i9", kind, 1_700_000_000.0), ["c1"])
    assert not any(isinstance(op, ZIncr | RecordIncr) for op in ops)  # no hot list, no affinity
    pushes = [op for op in ops if isinstance(op, RecordPush)]
    assert [(p.section, p.value) for p in pushes] == [(NEGATIVE, "i9")]


def test_negative_items_count_as_seen_not_as_recent() -> None:
    kv = MemoryKVStore()
    kv.write(
        behavior_writes(BehaviorEvent("u1", "i1", "click", 1.7e9), [])
        + behavior_writes(BehaviorEvent("u1", "i2", "dislike", 1.7e9), [])
        + behavior_writes(BehaviorEvent("u1", "i3", "hide", 1.7e9), [])
    )
    from zerorec.realtime import user_state_reads

    state = user_state_from("u1", kv.read(user_state_reads("u1")))
    assert state.recent_items == ["i1"]
    assert state.negative_items == ["i3", "i2"]
    assert set(state.seen_items) == {"i1", "i2", "i3"}
    assert user_state_from("u1", [Record(lists={HISTORY: ["a"]})]).negative_items == []


def test_training_weights_drop_negatives() -> None:
    keep, weight = training_weights(["view", "dislike", "purchase", "hide"], {**EVENT_WEIGHTS})
    assert keep.tolist() == [True, False, True, False]
    assert weight[0] == EVENT_WEIGHTS["view"] and weight[2] == EVENT_WEIGHTS["purchase"]


def test_neighbours_are_bounded_per_negative_and_in_number() -> None:
    n, k = 1000, 30
    neighbours = np.arange(n * k, dtype=np.int32).reshape(n, k) % n
    neighbours[0, 5:] = -1  # a short row
    index = {f"i{j}": j for j in range(n)}
    near = neighbours_of(index, neighbours, ["i0", "unknown"], per_item=10)
    assert sorted(near.tolist()) == neighbours[0, :5].tolist()
    many = neighbours_of(index, neighbours, [f"i{j}" for j in range(500)], per_item=10)
    assert len(many) <= NEGATIVE_QUERY_MAX * 10
    assert neighbours_of(index, None, ["i0"], 10).size == 0


def test_demotion_pushes_scores_down_whatever_their_sign() -> None:
    cands = [{"item_id": "a", "score": 1.0}, {"item_id": "b", "score": 0.5}]
    assert mark_demoted(cands, {"b"}, 0.5) == 1 and cands[1][DEMOTE] == 0.5 and DEMOTE not in cands[0]
    assert demoted_score(0.8, 0.5) == 0.4
    assert demoted_score(-0.8, 0.5) == -1.6
    assert demoted_score(0.8, None) == 0.8 and demoted_score(0.8, "x") == 0.8 and demoted_score(0.8, 2) == 0.8


def test_negative_kinds_weigh_nothing_whatever_the_configuration() -> None:
    from zerorec.realtime import event_weight

    assert event_weight("dislike") == 0.0 and event_weight("hide", None, {"hide": 5.0}) == 0.0
    assert event_weight("purchase", None, {"purchase": 9.0}) == 9.0
