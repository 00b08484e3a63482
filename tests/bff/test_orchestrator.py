"""zerorec.bff.Recommender against fake downstream functions over real HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from bff_fakes import Fakes
from zerorec.api import RecommendRequest, RecommendResponse
from zerorec.bff import Recommender
from zerorec.settings import Settings


def recommend(settings: Settings, hot_refresh_s: float = 0, **req: Any) -> RecommendResponse:
    async def go() -> RecommendResponse:
        rec = Recommender(settings, hot_refresh_s=hot_refresh_s)
        try:
            return await rec.recommend(RecommendRequest(**{"user_id": "u1", "n": 5, **req}))
        finally:
            await rec.aclose()

    return asyncio.run(go())


def ids(resp: RecommendResponse) -> list[str]:
    return [i.item_id for i in resp.items]


def test_happy_path_order_and_result(fakes: Fakes) -> None:
    fakes.delay.update({"user": 0.15, "recall": 0.15})
    t = time.perf_counter()
    resp = recommend(fakes.settings(), exclude=["i29"])
    elapsed = time.perf_counter() - t

    assert resp.degraded == []
    assert resp.source == "personalized"
    # Ranking reverses recall's order (the fake scores by position); reranking drops seen i1 and
    # the excluded i29 never comes back from recall.
    assert ids(resp) == ["i28", "i27", "i26", "i25", "i24"]
    assert all(i.reasons == ["mmr"] for i in resp.items)
    assert resp.items[0].metadata is not None and resp.items[0].metadata.title == "Title i28"
    assert resp.model_versions == {"recall": "als-1", "ranking": "deepfm-1"}
    assert {"user", "recall", "ranking", "reranking", "item", "total"} <= set(resp.timings_ms)

    (user,), (recall,) = fakes.called("user"), fakes.called("recall")
    (ranking,), (rerank,), (item,) = fakes.called("ranking"), fakes.called("reranking"), fakes.called("item")
    # user and recall overlap (concurrent), the rest run strictly after each other.
    assert user.start < recall.end and recall.start < user.end
    assert ranking.start >= max(user.end, recall.end)
    assert rerank.start >= ranking.end and item.start >= rerank.end
    assert elapsed < 0.3 + 1.0, "user and recall were not concurrent"
    # The contract bodies the BFF sent.
    assert recall.body == {"user_id": "u1", "n": 50, "recent_items": [], "exclude": ["i29"]}
    assert len(ranking.body["candidates"]["item_ids"]) == 29
    assert rerank.body["n"] == 5 and rerank.body["seen"] == ["i29", "i1"]
    assert item.body == {"item_ids": ids(resp)}


@pytest.mark.parametrize(
    ("how", "reason"),
    [("down", "ranking_unavailable"), ("http_500", "ranking_http_500"), ("garbage", "ranking_bad_response")],
)
def test_ranking_failure_keeps_recall_order(fakes: Fakes, how: str, reason: str) -> None:
    if how == "down":
        settings = fakes.settings(down=("ranking",))
    else:
        fakes.mode["ranking"] = how
        settings = fakes.settings()
    resp = recommend(settings)
    assert resp.degraded == [reason]
    assert resp.source == "personalized"
    assert ids(resp) == ["i0", "i2", "i3", "i4", "i5"]  # recall order, seen i1 dropped by reranking
    assert "ranking" not in resp.model_versions


@pytest.mark.parametrize("how", ["http_500", "timeout"])
def test_recall_failure_gives_hot_list(fakes: Fakes, how: str) -> None:
    if how == "timeout":
        fakes.delay["recall"] = 3.0
    else:
        fakes.mode["recall"] = how
    t = time.perf_counter()
    resp = recommend(fakes.settings(deadline_ms=200), exclude=["h0"])
    assert time.perf_counter() - t < 1.0
    assert resp.degraded == [f"recall_{how}"]
    assert resp.source == "hot"
    # h0 excluded by the caller; the user's seen i1 is not in the hot list anyway.
    assert ids(resp) == ["h1", "h2", "h3", "h4", "h5"]
    assert resp.items[0].channel == "hot" and resp.items[0].metadata is not None
    assert fakes.called("ranking") == []  # the hot list is not personalised
    assert fakes.called("recall", "/hot")[0].body == {"n": 7, "category": None}


def test_recall_process_down_uses_cached_hot_list_then_empty(fakes: Fakes) -> None:
    """recall's /hot dies with recall: the BFF falls back to the hot list it cached earlier."""

    async def go() -> tuple[RecommendResponse, RecommendResponse]:
        warm = Recommender(fakes.settings(), hot_refresh_s=0.001)
        try:
            await warm.recommend(RecommendRequest(user_id="u1", n=3))
            for _ in range(100):  # the background hot-list refresh after a good answer
                if warm._hot_cache:
                    break
                await asyncio.sleep(0.01)
            warm.settings = fakes.settings(down=("recall",))
            cached = await warm.recommend(RecommendRequest(user_id="u1", n=3))
        finally:
            await warm.aclose()
        cold = Recommender(fakes.settings(down=("recall",)), hot_refresh_s=0)
        try:
            empty = await cold.recommend(RecommendRequest(user_id="u1", n=3))
        finally:
            await cold.aclose()
        return cached, empty

    cached, empty = asyncio.run(go())
    assert cached.source == "hot_cache"
    assert cached.degraded == ["recall_unavailable", "hot_unavailable"]
    assert ids(cached) == ["h0", "h1", "h2"]
    assert empty.source == "none" and empty.items == []
    assert empty.degraded == ["recall_unavailable", "hot_unavailable", "hot_empty"]


def test_user_down_is_new_user(fakes: Fakes) -> None:
    resp = recommend(fakes.settings(down=("user",)))
    assert resp.degraded == ["user_unavailable"]
    # No profile -> nothing seen, so i1 comes back.
    assert ids(resp) == ["i29", "i28", "i27", "i26", "i25"]
    assert fakes.called("reranking")[0].body["seen"] == []


def test_unknown_user_is_not_degraded(fakes: Fakes) -> None:
    resp = recommend(fakes.settings(), user_id="new-user")
    assert resp.degraded == []
    assert len(resp.items) == 5


def test_item_down_gives_items_without_metadata(fakes: Fakes) -> None:
    resp = recommend(fakes.settings(down=("item",)))
    assert resp.degraded == ["item_unavailable"]
    assert len(resp.items) == 5 and all(i.metadata is None for i in resp.items)


def test_reranking_down_gives_ranked_top_n_without_seen_or_excluded(fakes: Fakes) -> None:
    resp = recommend(fakes.settings(down=("reranking",)), exclude=["i28"])
    assert resp.degraded == ["reranking_unavailable"]
    assert ids(resp) == ["i29", "i27", "i26", "i25", "i24"]


def test_slow_downstream_times_out_within_deadline(fakes: Fakes) -> None:
    fakes.delay["ranking"] = 3.0
    t = time.perf_counter()
    resp = recommend(fakes.settings(deadline_ms=200))
    elapsed = time.perf_counter() - t
    assert resp.degraded == ["ranking_timeout"]
    assert ids(resp) == ["i0", "i2", "i3", "i4", "i5"]
    assert elapsed < 1.5
    assert 150 <= resp.timings_ms["ranking"] < 700


def test_total_budget_bounds_the_whole_request(fakes: Fakes) -> None:
    for s in ("user", "recall", "ranking", "reranking", "item"):
        fakes.delay[s] = 0.4
    t = time.perf_counter()
    resp = recommend(fakes.settings(deadline_ms=500, total_budget_ms=700))
    elapsed = time.perf_counter() - t
    # Unbounded this takes 1.6 s. user+recall (0.4 s) fit; ranking is cut at the 0.7 s budget,
    # reranking and item are skipped: recall order, no metadata.
    assert resp.degraded == ["ranking_timeout", "reranking_skipped", "item_skipped"]
    assert elapsed < 1.1
    assert resp.timings_ms["total"] < 1000
    assert ids(resp) == ["i0", "i2", "i3", "i4", "i5"]


def test_an_oversized_answer_degrades_its_stage(fakes: Fakes) -> None:
    """The BFF reads at most its cap of any internal answer: past it the stage degrades `too_large`."""
    from zerorec.bff import HTTPPool

    async def go() -> RecommendResponse:
        rec = Recommender(fakes.settings(), client=HTTPPool(max_response=300), hot_refresh_s=0)
        try:
            return await rec.recommend(RecommendRequest(user_id="u1", n=5))
        finally:
            await rec.client.aclose()

    resp = asyncio.run(go())
    assert "recall_too_large" in resp.degraded and resp.source == "hot"


def test_the_compact_topology_calls_one_pipeline_function(fakes: Fakes) -> None:
    """With ZEROREC_PIPELINE_URL the BFF asks the pipeline function (recall, ranking and
    reranking in one process) and hydrates its items; recall, ranking, reranking and user are not
    called. When the pipeline fails, the hot list (from the pipeline function's /hot) minus what the
    user has seen answers, degraded."""
    resp = recommend(fakes.settings(compact=True), exclude=["i0"])
    assert resp.degraded == [] and resp.source == "personalized"
    assert ids(resp) == ["i2", "i3", "i4", "i5", "i6"] and resp.items[0].reasons == ["compact"]
    assert resp.items[0].metadata is not None and resp.model_versions == {"pipeline": "pipe-1"}
    (call,) = fakes.called("pipeline")
    assert call.body == {
        "user_id": "u1", "n": 5, "candidates": 50, "recent_items": [], "exclude": ["i0"], "context": {}
    }
    assert not any(fakes.called(s) for s in ("recall", "ranking", "reranking", "user"))

    fakes.reset()
    fakes.mode["pipeline"] = "http_500"
    resp = recommend(fakes.settings(compact=True))
    assert resp.degraded == ["pipeline_http_500"] and resp.source == "hot"
    assert len(resp.items) == 5 and fakes.called("pipeline", "/hot") and fakes.called("user")


def test_the_pipeline_call_gets_the_three_stages_deadlines(fakes: Fakes) -> None:
    """The pipeline does the work of recall, ranking and reranking: its call may take their three
    deadlines (within the total budget), not one."""
    fakes.delay["pipeline"] = 0.5
    resp = recommend(fakes.settings(compact=True, deadline_ms=300, total_budget_ms=5000))
    assert resp.degraded == [] and resp.source == "personalized"
    fakes.reset()
    fakes.delay["pipeline"] = 1.0
    resp = recommend(fakes.settings(compact=True, deadline_ms=300, total_budget_ms=5000))
    assert resp.degraded[0] == "pipeline_timeout"
