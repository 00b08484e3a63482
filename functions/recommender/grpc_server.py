"""recommender (BFF), gRPC: `zerorec.recommender.v1.Recommender/Recommend` on 10072 by default.

Run: `python functions/recommender/grpc_server.py [--host 0.0.0.0] [--port 10072]`
(port: --port, else ZEROREC_GRPC_PORT, else $PORT as Knative sets it, else 10072).
Same contract and validation as POST /recommend; the stubs in proto/ are generated and committed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import DecodeError
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent / "proto"))

import recommender_pb2 as pb
import recommender_pb2_grpc as pb_grpc
from zerorec.api import MAX_BODY_BYTES, RecommendRequest, RecommendResponse, validation_reason
from zerorec.bff import Recommender
from zerorec.settings import get_settings

log = logging.getLogger("zerorec.recommender.grpc")
SERVICE = "zerorec.recommender.v1.Recommender"


def decode(msg: pb.RecommendRequest) -> RecommendRequest:
    """Proto -> the validated request model (raises ValidationError)."""
    data: dict[str, object] = {"user_id": msg.user_id, "exclude": list(msg.exclude)}
    if not msg.user_id and msg.recent_items:  # a guest: the session's items instead of a user
        data = {"user_id": None, "recent_items": list(msg.recent_items), "exclude": list(msg.exclude)}
    elif msg.recent_items:
        data["recent_items"] = list(msg.recent_items)
    if msg.HasField("n"):
        data["n"] = msg.n
    if msg.HasField("context"):
        data["context"] = json_format.MessageToDict(msg.context)
    return RecommendRequest.model_validate(data)


def encode(resp: RecommendResponse) -> pb.RecommendResponse:
    """The response model -> proto."""
    out = pb.RecommendResponse(
        user_id=resp.user_id, source=resp.source, degraded=resp.degraded,
        timings_ms=resp.timings_ms, model_versions=resp.model_versions,
    )
    for it in resp.items:
        item = out.items.add(item_id=it.item_id, score=it.score, channel=it.channel, reasons=it.reasons)
        if it.metadata is not None:
            meta = struct_pb2.Struct()
            meta.update(it.metadata.model_dump(mode="json"))
            item.metadata.CopyFrom(meta)
    return out


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """Thin gRPC adapter over zerorec.bff.Recommender."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        try:
            req = decode(request)
        except ValidationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, validation_reason(exc))
        except ValueError as exc:  # a Struct JSON cannot hold (NaN, Infinity): was UNKNOWN
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"context: {exc}")
        return encode(await self.recommender.recommend(req))


async def serve(host: str, port: int, recommender: Recommender | None = None) -> tuple[grpc.aio.Server, int]:
    """Start the server; returns it and the bound port (0 picks a free one)."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_BODY_BYTES),
        ("grpc.so_reuseport", 0),
    ])
    servicer = RecommenderServicer(recommender or Recommender())

    async def recommend_bytes(raw: bytes, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        # The message is parsed here, not by grpc: a malformed or too deeply nested one (a Struct
        # past protobuf's depth limit) is then INVALID_ARGUMENT with the reason, not UNKNOWN.
        try:
            request = pb.RecommendRequest.FromString(raw)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed RecommendRequest: {exc}")
        return await servicer.Recommend(request, context)

    handlers = {
        "Recommend": grpc.unary_unary_rpc_method_handler(
            recommend_bytes, response_serializer=pb.RecommendResponse.SerializeToString
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


def _port(cli_port: int | None) -> int:
    if cli_port is not None:
        return cli_port
    if "ZEROREC_GRPC_PORT" not in os.environ and os.environ.get("PORT", "").isdigit():
        return int(os.environ["PORT"])
    return get_settings().grpc_port


async def _main(host: str, port: int) -> None:
    recommender = Recommender()
    server, bound = await serve(host, port, recommender)
    log.warning("recommender gRPC listening on %s:%d", host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=5)
    await recommender.aclose()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description="ZeroRec recommender gRPC server")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_main(args.host, _port(args.port)))


if __name__ == "__main__":
    main()
