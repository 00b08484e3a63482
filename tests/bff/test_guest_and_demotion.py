"""The BFF's part of richer feedback: a guest (no user_id) is served from the session's recent items,
and recall's demotion of a disliked item's neighbours survives ranking."""

from __future__ import annotations

import asyncio
from typing import Any

from bff_fakes import Fakes
from zerorec.api import RecommendRequest, RecommendResponse
from zerorec.bff import Recommender, _ranked
from zerorec.feedback import DEMOTE, GUEST_USER_ID


def recommend(fakes: Fakes, **req: Any) -> RecommendResponse:
    async def go() -> RecommendResponse:
        rec = Recommender(fakes.settings(), hot_refresh_s=0)
        try:
            return await rec.recommend(RecommendRequest(**{"n": 5, **req}))
        finally:
            await rec.aclose()

    return asyncio.run(go())


def test_a_guest_is_served_from_the_session_without_a_user_call(fakes: Fakes) -> None:
    resp = recommend(fakes, recent_items=["i28", "i26"])
    assert fakes.called("user") == []  # no profile to fetch
    (recall,) = fakes.called("recall")
    assert recall.body["user_id"] == GUEST_USER_ID and recall.body["recent_items"] == ["i28", "i26"]
    (rerank,) = fakes.called("reranking")
    assert {"i28", "i26"} <= set(rerank.body["seen"])  # the session's items are not offered back
    ids = [i.item_id for i in resp.items]
    assert len(ids) == 5 and not {"i28", "i26"} & set(ids)
    assert resp.user_id == GUEST_USER_ID and resp.degraded == [] and resp.source == "personalized"


def test_a_registered_user_sends_no_session_items(fakes: Fakes) -> None:
    recommend(fakes, user_id="u1")
    (recall,) = fakes.called("recall")
    assert recall.body["recent_items"] == [] and recall.body["user_id"] == "u1"


def test_demoted_candidates_go_down_after_ranking() -> None:
    candidates = [
        {"item_id": "a", "score": 0.9, "channel": "als"},
        {"item_id": "b", "score": 0.8, "channel": "als", DEMOTE: 0.5},
        {"item_id": "c", "score": 0.7, "channel": "als", DEMOTE: "junk"},  # ignored, never trusted
    ]
    ranked = _ranked(candidates, [0.6, 0.9, 0.5])
    assert [r["score"] for r in ranked] == [0.6, 0.45, 0.5]
    assert [r["score"] for r in _ranked(candidates)] == [0.9, 0.4, 0.7]  # ranking down: recall order


def test_a_guest_over_grpc(fakes: Fakes) -> None:
    import sys
    from pathlib import Path

    import grpc

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "functions" / "recommender"))
    import grpc_server
    import recommender_pb2 as pb
    import recommender_pb2_grpc as pb_grpc

    async def go() -> Any:
        rec = Recommender(fakes.settings(), hot_refresh_s=0)
        server, port = await grpc_server.serve("127.0.0.1", 0, rec)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.RecommenderStub(channel)
                guest = await stub.Recommend(pb.RecommendRequest(recent_items=["i28"], n=3), timeout=5)
                try:
                    await stub.Recommend(pb.RecommendRequest(n=3), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    return guest, exc.code(), exc.details()
                return guest, grpc.StatusCode.OK, ""
        finally:
            await server.stop(grace=None)
            await rec.aclose()

    guest, code, details = asyncio.run(go())
    assert guest.user_id == GUEST_USER_ID and len(guest.items) == 3
    assert "i28" not in [i.item_id for i in guest.items]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details
