"""functions/recommender/grpc_server.py: a real grpc.aio server over the fake downstream functions."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from bff_fakes import Fakes
from zerorec.bff import Recommender

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "functions" / "recommender"))

import grpc_server  # noqa: E402
import recommender_pb2 as pb  # noqa: E402
import recommender_pb2_grpc as pb_grpc  # noqa: E402


def with_server(fakes: Fakes, body: Callable[[Any], Awaitable[Any]], **settings: Any) -> Any:
    async def go() -> Any:
        rec = Recommender(fakes.settings(**settings), hot_refresh_s=0)
        server, port = await grpc_server.serve("127.0.0.1", 0, rec)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await body(pb_grpc.RecommenderStub(channel))
        finally:
            await server.stop(grace=None)
            await rec.aclose()

    return asyncio.run(go())


def test_round_trip(fakes: Fakes) -> None:
    async def body(stub: Any) -> pb.RecommendResponse:
        req = pb.RecommendRequest(user_id="u1", n=3, exclude=["i29"])
        req.context.update({"page": "home", "hour": 9})
        return await stub.Recommend(req, timeout=5)

    resp = with_server(fakes, body)
    assert [i.item_id for i in resp.items] == ["i28", "i27", "i26"]
    assert resp.source == "personalized" and list(resp.degraded) == []
    assert resp.items[0].reasons == ["mmr"]
    assert resp.items[0].metadata["title"] == "Title i28"
    assert resp.model_versions["ranking"] == "deepfm-1"
    assert "total" in resp.timings_ms
    assert fakes.called("ranking")[0].body["context"] == {"page": "home", "hour": 9.0}


def test_degraded_over_grpc(fakes: Fakes) -> None:
    async def body(stub: Any) -> pb.RecommendResponse:
        return await stub.Recommend(pb.RecommendRequest(user_id="u1"), timeout=5)

    resp = with_server(fakes, body, down=("ranking", "item"))
    assert list(resp.degraded) == ["ranking_unavailable", "item_unavailable"]
    assert len(resp.items) == 10  # default n
    assert not resp.items[0].HasField("metadata")


@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (pb.RecommendRequest(user_id="u1", n=0), "n: Input should be greater than or equal to 1"),
        (pb.RecommendRequest(user_id="u1", n=101), "n: Input should be less than or equal to 100"),
        (pb.RecommendRequest(user_id=""), "user_id: String should have at least 1 character"),
        (pb.RecommendRequest(user_id="u1", exclude=["a"] * 1001), "exclude: List should have at most 1000"),
    ],
    ids=["n0", "n101", "empty-user", "exclude-too-long"],
)
def test_invalid_argument(fakes: Fakes, req: pb.RecommendRequest, reason: str) -> None:
    async def body(stub: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Recommend(req, timeout=5)
        return err.value

    err = with_server(fakes, body)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in err.details()
    assert fakes.calls == []  # rejected before any downstream call


def test_nested_context_is_invalid(fakes: Fakes) -> None:
    async def body(stub: Any) -> grpc.aio.AioRpcError:
        req = pb.RecommendRequest(user_id="u1")
        req.context.update({"deep": {"x": 1}})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Recommend(req, timeout=5)
        return err.value

    err = with_server(fakes, body)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "context.deep" in err.details()


def test_oversized_message_is_rejected(fakes: Fakes) -> None:
    async def body(stub: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Recommend(pb.RecommendRequest(user_id="u1", exclude=["x" * 100] * 700), timeout=5)
        return err.value

    err = with_server(fakes, body)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    proto_dir = REPO / "functions" / "recommender" / "proto"
    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    rc = protoc.main([
        "protoc", f"-I{proto_dir}", f"-I{well_known}",
        f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
        str(proto_dir / "recommender.proto"),
    ])
    assert rc == 0
    for name in ("recommender_pb2.py", "recommender_pb2_grpc.py", "recommender_pb2.pyi"):
        assert (tmp_path / name).read_text() == (proto_dir / name).read_text(), f"{name} is stale"
