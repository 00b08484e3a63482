"""The gRPC API under generated messages: hypothesis strategies over RecommendRequest's fields (ids of
any text, n over the whole int32 range, context Structs of any JSON shape, NaN and infinities, long
exclude lists) and hostile raw bytes. Invariant: OK or INVALID_ARGUMENT with a reason, never
INTERNAL/UNKNOWN. The BFF's downstream functions refuse connections here, so OK answers are degraded.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import hypothesis
import pytest
from fuzz_targets import examples_per_operation
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "functions" / "recommender"))

import grpc_server  # noqa: E402
import recommender_pb2 as pb  # noqa: E402
import recommender_pb2_grpc as pb_grpc  # noqa: E402

REFUSED = "http://127.0.0.1:1"
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def stub() -> Iterator[Any]:
    """A real grpc.aio server (its own loop, in a thread) over a BFF whose downstreams refuse."""
    from zerorec.bff import Recommender
    from zerorec.settings import Settings

    settings = Settings(**{f"{n}_url": REFUSED for n in ("recall", "ranking", "reranking", "user", "item")})
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        state["rec"] = Recommender(settings, hot_refresh_s=0)
        state["server"], state["port"] = await grpc_server.serve("127.0.0.1", 0, state["rec"])
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    assert ready.wait(30)
    channel = grpc.insecure_channel(f"127.0.0.1:{state['port']}")
    stub = pb_grpc.RecommenderStub(channel)
    stub.channel = channel  # for raw-bytes calls
    yield stub
    channel.close()

    async def stop() -> None:
        await state["server"].stop(grace=None)
        await state["rec"].aclose()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


def _call(stub: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    try:
        stub.Recommend(request, timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


json_scalars = st.none() | st.booleans() | st.floats(allow_nan=True) | st.text(max_size=300)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=70), inner, max_size=4),
    max_leaves=12,
)
ids = st.text(max_size=140) | st.from_regex(r"[\w.:@\-]{1,128}", fullmatch=True)


@st.composite
def requests(draw: Any) -> Any:
    msg = pb.RecommendRequest(user_id=draw(ids), exclude=draw(st.lists(ids, max_size=1100)))
    if draw(st.booleans()):  # a guest's session (with or without a user id)
        msg.recent_items.extend(draw(st.lists(ids, max_size=60)))
    if draw(st.booleans()):
        msg.n = draw(st.integers(min_value=-(2**31), max_value=2**31 - 1))
    if draw(st.booleans()):
        context = draw(st.dictionaries(st.text(max_size=70), json_values, max_size=40))
        msg.context.update(context)
    return msg


def test_fuzz_grpc_recommend(stub: Any) -> None:
    problems: list[str] = []
    cases = 0

    @hypothesis.settings(
        max_examples=examples_per_operation() * 5,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.generate],
    )
    @hypothesis.given(request=requests())
    def run(request: Any) -> None:
        nonlocal cases
        cases += 1
        code, details = _call(stub, request)
        if code not in ALLOWED or (code != grpc.StatusCode.OK and not details.strip()):
            problems.append(f"{code.name} {details[:200]!r} for {str(request)[:300]!r}")

    run()
    print(f"\ngrpc fuzz: {cases} cases, {len(problems)} failures")
    assert not problems, problems[:5]


@pytest.mark.parametrize("depth", [10, 80, 150, 1000])
def test_deeply_nested_context_is_refused_with_a_reason(stub: Any, depth: int) -> None:
    """A raw request whose context nests `depth` ListValues: INVALID_ARGUMENT (or OK when shallow
    and valid), never INTERNAL. Built on the wire: protobuf's Python API refuses to build it."""
    # Struct{fields{"k": Value{list_value{values: Value{list_value{...}}}}}} encoded by hand.
    value = b""
    for _ in range(depth):
        lst = b"\x0a" + _varint(len(value)) + value if value else b""  # ListValue.values (1)
        value = b"\x32" + _varint(len(lst)) + lst  # Value.list_value (6)
    entry = b"\x0a\x01k" + b"\x12" + _varint(len(value)) + value  # FieldsEntry key (1), value (2)
    struct = b"\x0a" + _varint(len(entry)) + entry  # Struct.fields (1)
    raw = b"\x0a\x02u1" + b"\x1a" + _varint(len(struct)) + struct  # user_id (1), context (3)
    code, details = _raw_call(stub.channel, raw)
    assert code in ALLOWED, (code, details)
    assert code == grpc.StatusCode.OK or details.strip(), (code, details)


def _varint(n: int) -> bytes:
    out = b""
    while True:
        bits, n = n & 0x7F, n >> 7
        out += bytes([bits | (0x80 if n else 0)])
        if not n:
            return out


def _raw_call(channel: grpc.Channel, raw: bytes) -> tuple[grpc.StatusCode, str]:
    """Send `raw` bytes as the request message (no client-side serialisation)."""
    call = channel.unary_unary(
        "/zerorec.recommender.v1.Recommender/Recommend",
        request_serializer=lambda b: b,
        response_deserializer=pb.RecommendResponse.FromString,
    )
    try:
        call(raw, timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def test_nan_and_infinite_context_values(stub: Any) -> None:
    msg = pb.RecommendRequest(user_id="u1")
    msg.context.update({"a": math.nan, "b": math.inf, "c": -math.inf})
    code, details = _call(stub, msg)
    assert code in ALLOWED and (code == grpc.StatusCode.OK or details), (code, details)
