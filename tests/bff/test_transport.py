"""zerorec.bff.HTTPPool (the BFF's internal HTTP client) against raw asyncio servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import pytest
from zerorec.bff import BadResponse, HTTPPool, parse_ranking, parse_recall

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return await reader.readexactly(length)


def response(body: bytes, status: int = 200, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def with_server(handler: Handler, go: Callable[[str, list[int]], Awaitable[object]]) -> object:
    """Run `go(url, connections)` against a server calling `handler` per connection."""

    async def main() -> object:
        connections: list[int] = []

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await go(f"http://127.0.0.1:{port}/", connections)
        finally:
            server.close()

    return asyncio.run(main())


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        body = await read_request(reader)
        writer.write(response(body))
        await writer.drain()


def test_keep_alive_reuses_one_connection() -> None:
    async def go(url: str, conns: list[int]) -> object:
        pool = HTTPPool()
        got = [await pool.post(url, b'{"k": %d}' % k, timeout=2) for k in range(5)]
        await pool.aclose()
        return got, len(conns)

    got, conns = with_server(echo_forever, go)  # type: ignore[misc]
    assert got == [(200, b'{"k": %d}' % k) for k in range(5)]
    assert conns == 1


def test_concurrent_calls_use_separate_connections() -> None:
    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(response(body))

    async def go(url: str, conns: list[int]) -> object:
        pool = HTTPPool()
        got = await asyncio.gather(*(pool.post(url, b"%d" % k, timeout=2) for k in range(4)))
        await pool.aclose()
        return got, len(conns)

    got, conns = with_server(slow_echo, go)  # type: ignore[misc]
    assert got == [(200, b"%d" % k) for k in range(4)]
    assert conns == 4


def test_chunked_response_and_status() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await reader.read()

    async def go(url: str, conns: list[int]) -> object:
        pool = HTTPPool()
        try:
            return await pool.post(url, b"{}", timeout=2)
        finally:
            await pool.aclose()

    assert with_server(chunked, go) == (503, b"abcde")


def test_stale_keep_alive_connection_is_retried_on_a_new_one() -> None:
    """The server closes an idle keep-alive connection (uvicorn does after 5 s): the next call on
    it fails before any response byte and is retried, once, on a fresh connection."""

    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        writer.write(response(body))
        await writer.drain()

    async def go(url: str, conns: list[int]) -> object:
        pool = HTTPPool()
        try:
            first = await pool.post(url, b"1", timeout=2)
            await asyncio.sleep(0.05)  # the server has closed it by now
            second = await pool.post(url, b"2", timeout=2)
            return first, second, len(conns)
        finally:
            await pool.aclose()

    assert with_server(one_then_close, go) == ((200, b"1"), (200, b"2"), 2)


def test_connection_close_header_is_honoured() -> None:
    async def close_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_request(reader)
        writer.write(response(body, extra="Connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(0.5)  # keeps the socket open: only the header says "close"

    async def go(url: str, conns: list[int]) -> object:
        pool = HTTPPool()
        try:
            got = [await pool.post(url, b"%d" % k, timeout=2) for k in range(2)]
            return got, len(conns)
        finally:
            await pool.aclose()

    assert with_server(close_after, go) == ([(200, b"0"), (200, b"1")], 2)


def test_timeout_drops_the_connection_and_the_pool_recovers() -> None:
    calls: list[int] = []

    async def first_hangs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            calls.append(1)
            if len(calls) == 1:
                await asyncio.sleep(1.0)  # the late answer must never reach the next caller
            writer.write(response(body))
            await writer.drain()

    async def go(url: str, conns: list[int]) -> object:
        pool = HTTPPool()
        try:
            with pytest.raises(TimeoutError):
                await pool.post(url, b"late", timeout=0.1)
            return await pool.post(url, b"fresh", timeout=2), len(conns)
        finally:
            await pool.aclose()

    assert with_server(first_hangs, go) == ((200, b"fresh"), 2)


def test_refused_and_broken_responses_are_connection_errors() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)

    async def go(url: str, conns: list[int]) -> object:
        pool = HTTPPool()
        try:
            with pytest.raises(ConnectionError):
                await pool.post(url, b"{}", timeout=2)
            return True
        finally:
            await pool.aclose()

    assert with_server(garbage, go) is True

    async def refused() -> None:
        from bff_fakes import closed_port

        pool = HTTPPool()
        with pytest.raises(OSError):
            await pool.post(f"http://127.0.0.1:{closed_port()}/", b"{}", timeout=2)

    asyncio.run(refused())


def test_contract_checks_of_the_big_responses() -> None:
    good = b'{"candidates": [{"item_id": "a", "score": 1, "channel": "als", "channel_scores": {"als": 0.5}}]}'
    cands, version, signal_channels = parse_recall(good)
    assert cands[0]["item_id"] == "a" and version is None and signal_channels == []
    with_signals = b'{"candidates": [{"item_id": "a", "score": 1, "channel": "als", "signals": [0.5, 3]}], '
    assert parse_recall(with_signals + b'"signal_channels": ["als"]}')[2] == ["als"]
    for bad in (
        b'{"unexpected": true}',
        b"[]",
        b"not json",
        b'{"candidates": [{"item_id": 1, "score": 1, "channel": "als"}]}',
        b'{"candidates": [{"item_id": "a", "score": "1", "channel": "als"}]}',
        b'{"candidates": [{"item_id": "a", "score": true, "channel": "als"}]}',
        b'{"candidates": [{"item_id": "a", "score": 1, "channel": "als", "channel_scores": []}]}',
        b'{"candidates": [], "model_version": 3}',
        b'{"candidates": [], "signal_channels": "als"}',
        b'{"candidates": [], "signal_channels": [1]}',
    ):
        with pytest.raises(BadResponse):
            parse_recall(bad)
    assert parse_ranking(b'{"scores": [1, 0.5], "model_version": "v"}') == ([1.0, 0.5], "v")
    for bad in (b'{"scores": [1, "x"]}', b'{"scores": {}}', b'{"unexpected": true}', b'{"scores": [null]}'):
        with pytest.raises(BadResponse):
            parse_ranking(bad)


def test_recall_contract_check_names_the_first_bad_candidate() -> None:
    ok = {"item_id": "a", "score": 0.5, "channel": "ease"}
    cands, _, _ = parse_recall(orjson.dumps({"candidates": [ok, {**ok, "channel_scores": {}}]}))
    assert cands[1]["item_id"] == "a"
    for bad in (
        None,
        "a",
        {**ok, "channel_scores": None},
        {**ok, "score": None},
        {"score": 1, "channel": "ease"},
        {**ok, "channel": 3},
    ):
        body = orjson.dumps({"candidates": [ok] * 3 + [bad, {**ok, "item_id": "later"}]})
        with pytest.raises(BadResponse, match="not a RecallCandidate") as err:
            parse_recall(body)
        assert "later" not in str(err.value)
