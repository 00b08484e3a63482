"""The BFF's side of impressions and experiments: every answer has a recommendation_id, positions and
its variant; what it served is recorded for the consumer; in-revision variants change the pipeline."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bff_fakes import Fakes
from zerorec.api import RecommendRequest, RecommendResponse
from zerorec.bff import Recommender
from zerorec.ctr import ServedLog, read_served
from zerorec.storage.kv_memory import MemoryKVStore

EXPERIMENT = json.dumps(
    {"name": "rank-test", "variants": [{"name": "ranked"}, {"name": "recall-order", "ranking": False}]}
)


def recommend_many(settings: Any, users: list[str]) -> tuple[list[RecommendResponse], MemoryKVStore]:
    kv = MemoryKVStore()

    async def go() -> list[RecommendResponse]:
        rec = Recommender(settings, hot_refresh_s=0, served_log=ServedLog(settings, kv))
        try:
            return [await rec.recommend(RecommendRequest(user_id=u, n=4)) for u in users]
        finally:
            await rec.aclose()

    return asyncio.run(go()), kv


def test_answer_names_id_positions_variant_and_is_recorded(fakes: Fakes) -> None:
    (resp, again), kv = recommend_many(fakes.settings(variant="blue"), ["u1", "u1"])
    assert resp.variant == "blue" and resp.degraded == []
    assert len(resp.recommendation_id) == 32 and resp.recommendation_id != again.recommendation_id
    assert [i.position for i in resp.items] == [1, 2, 3, 4]
    served = read_served(kv, resp.recommendation_id)
    assert served is not None and served.user_id == "u1" and served.variant == "blue"
    assert served.items == tuple((i.item_id, i.channel) for i in resp.items)
    assert served.model_versions == resp.model_versions


def test_recording_off_writes_nothing(fakes: Fakes) -> None:
    (resp,), kv = recommend_many(fakes.settings(recommendation_ttl_s=0), ["u1"])
    assert resp.recommendation_id and read_served(kv, resp.recommendation_id) is None


def test_in_revision_experiment_assigns_stably_and_skips_ranking_for_its_arm(fakes: Fakes) -> None:
    users = [f"user{k}" for k in range(12)]
    resps, _ = recommend_many(fakes.settings(experiment=EXPERIMENT), users + users)
    first, second = resps[:12], resps[12:]
    assert [r.variant for r in first] == [r.variant for r in second]  # stable per user
    assert {r.variant for r in first} == {"default/ranked", "default/recall-order"}
    ranked_users = {r.user_id for r in first if r.variant == "default/ranked"}
    ranking_calls = {c.body["user_id"] for c in fakes.called("ranking")}
    assert ranking_calls == ranked_users  # the recall-order arm never asked ranking
    assert all(r.degraded == [] for r in resps)  # skipping ranking on purpose is no degradation
    recall_order = next(r for r in first if r.variant == "default/recall-order")
    ranked = next(r for r in first if r.variant == "default/ranked")
    assert [i.item_id for i in recall_order.items] != [i.item_id for i in ranked.items]


def test_grpc_answer_carries_id_positions_and_variant(fakes: Fakes) -> None:
    from test_grpc import pb, with_server

    async def body(stub: Any) -> Any:
        return await stub.Recommend(pb.RecommendRequest(user_id="u1", n=3), timeout=5)

    resp = with_server(fakes, body, variant="green")
    assert resp.variant == "green" and len(resp.recommendation_id) == 32
    assert [i.position for i in resp.items] == [1, 2, 3]
