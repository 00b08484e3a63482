"""zerorec.bff.HTTPPool (the BFF's internal HTTP client) against raw asyncio servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import pytest
from zerorec.bff import BadResponse, HTTPPool, ResponseTooLarge, parse_ranking, parse_recall

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
    good = {"item_ids": ["a", "b"], "scores": [1, 0.5], "channel": [0, 1], "channels": ["als", "ease"]}
    got = parse_recall(orjson.dumps(good))
    assert got.batch.item_ids == ["a", "b"] and got.batch.model_version is None
    assert got.batch.channel_names() == ["als", "ease"] and got.body == orjson.dumps(good)
    signed = {**good, "signals": "A" * 44, "model_version": "v1"}  # float32 [2, 2, 2]: 32 bytes
    assert parse_recall(orjson.dumps(signed)).batch.model_version == "v1"
    for bad in (
        {"unexpected": True},
        [],
        {**good, "item_ids": [1, "b"]},
        {**good, "scores": ["1", 0.5]},
        {**good, "scores": [True, 0.5]},
        {**good, "scores": [1.0]},
        {**good, "channel": [0, 2]},
        {**good, "channels": "als"},
        {**good, "channels": [1, 2]},
        {**good, "model_version": 3},
        {**good, "signals": "A" * 40},
        {**good, "found": [1]},
    ):
        with pytest.raises(BadResponse):
            parse_recall(orjson.dumps(bad))
    with pytest.raises(BadResponse):
        parse_recall(b"not json")
    scores, version = parse_ranking(b'{"scores": [1, 0.5], "model_version": "v"}')
    assert scores.tolist() == [1.0, 0.5] and version == "v"
    for bad_body in (b'{"scores": [1, "x"]}', b'{"scores": {}}', b'{"unexpected": 1}', b'{"scores": [null]}'):
        with pytest.raises(BadResponse):
            parse_ranking(bad_body)


def test_recall_contract_check_names_what_is_wrong() -> None:
    good = {"item_ids": ["a", "b"], "scores": [1, 0.5], "channel": [0, 0], "channels": ["als"]}
    with pytest.raises(BadResponse, match=r"scores\.1"):
        parse_recall(orjson.dumps({**good, "scores": [1, None]}))
    with pytest.raises(BadResponse, match="one entry per item"):
        parse_recall(orjson.dumps({**good, "channel": [0]}))


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_response_past_the_cap_fails_the_call_unread(framing: str) -> None:
    """A downstream that answers too much (a bug, a hostile peer) costs the BFF at most the cap:
    the call fails with ResponseTooLarge (the stage degrades `too_large`) and the connection goes;
    an answer within the cap on the same pool still works."""
    big = b"x" * 50_000

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            if body != b"big":
                writer.write(response(b'"ok"'))
            elif framing == "chunked":  # no Content-Length: only the count of body bytes can stop it
                head = b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n"
                chunks = b"".join(b"%x\r\n%s\r\n" % (1000, big[:1000]) for _ in range(50))
                writer.write(head + chunks + b"0\r\n\r\n")
            else:
                writer.write(response(big))
            await writer.drain()

    async def go(url: str, connections: list[int]) -> None:
        pool = HTTPPool(max_response=10_000)
        with pytest.raises(ResponseTooLarge, match="10000 bytes"):
            await pool.post(url, b"big", timeout=5)
        assert await pool.post(url, b"small", timeout=5) == (200, b'"ok"')
        await pool.aclose()

    with_server(handler, go)


def test_the_httpx_transport_caps_responses_too() -> None:
    import httpx
    from zerorec.bff import HttpxTransport

    answer = httpx.MockTransport(lambda r: httpx.Response(200, content=b"y" * 5000))
    client = httpx.AsyncClient(transport=answer)

    async def go() -> None:
        with pytest.raises(ResponseTooLarge):
            await HttpxTransport(client, max_response=4999).post("http://x/", b"{}", timeout=5)
        assert (await HttpxTransport(client, max_response=5000).post("http://x/", b"{}", timeout=5))[0] == 200
        await client.aclose()

    asyncio.run(go())
