"""WebSocket and other upgrades, and CONNECT tunnels, over loopback (spec sections 5 and 6)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tunnelmesh_proxy.routing import CmuxRule, Router
from tunnelmesh_proxy.server import ProxyServer
from tunnelmesh_proxy.testing import LOOPS, read_response, runner

pytest.importorskip("uvloop")
websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect as ws_connect  # noqa: E402
from websockets.asyncio.server import serve as ws_serve  # noqa: E402

Runner = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Runner:
    return runner(request.param)


@contextlib.asynccontextmanager
async def proxy(**options: Any) -> AsyncIterator[ProxyServer]:
    server = ProxyServer(Router([CmuxRule()]), **options)
    await server.listen([("127.0.0.1", 0)])
    try:
        yield server
    finally:
        await server.aclose(grace=1.0)


@contextlib.asynccontextmanager
async def tcp_server(
    host: str, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
) -> AsyncIterator[int]:
    writers: list[asyncio.StreamWriter] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()


async def echo(websocket: Any) -> None:
    async for message in websocket:
        await websocket.send(message)


# --- WebSocket -------------------------------------------------------------------------------------


def test_websocket_text_binary_and_ping(run: Runner) -> None:
    async def main() -> None:
        async with ws_serve(echo, "127.18.0.71", 0) as server, proxy() as p:
            port = next(iter(server.server.sockets)).getsockname()[1]
            host, pport = p.addresses[0]
            headers = {
                "X-Cmux-Port-Internal": str(port),
                "X-Cmux-Workspace-Internal": "workspace-71",
            }
            async with ws_connect(f"ws://{host}:{pport}/ws", additional_headers=headers) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                await ws.send(b"\x00\x01binary" * 1000)
                assert await ws.recv() == b"\x00\x01binary" * 1000
                pong = await ws.ping(b"p")
                await asyncio.wait_for(pong, 5)

    run(main)


def test_sixteen_concurrent_websockets(run: Runner) -> None:
    async def main() -> None:
        async with ws_serve(echo, "127.18.0.72", 0) as server, proxy() as p:
            port = next(iter(server.server.sockets)).getsockname()[1]
            host, pport = p.addresses[0]

            async def client(i: int) -> None:
                headers = {"X-Cmux-Port-Internal": str(port), "X-Cmux-Workspace-Internal": "ws72"}
                async with ws_connect(f"ws://{host}:{pport}/", additional_headers=headers) as ws:
                    for j in range(5):
                        await ws.send(f"{i}-{j}")
                        assert await ws.recv() == f"{i}-{j}"

            await asyncio.gather(*(client(i) for i in range(16)))

    run(main)


def test_websocket_through_host_subdomain(run: Runner) -> None:
    async def main() -> None:
        async with ws_serve(echo, "127.18.176.32", 0) as server, proxy() as p:
            port = next(iter(server.server.sockets)).getsockname()[1]
            host, pport = p.addresses[0]
            # the URI names the workspace and port; the TCP connection goes to the proxy
            uri = f"ws://workspace-a-{port}.localhost:{pport}/"
            async with ws_connect(uri, host=host, port=pport) as ws:
                await ws.send("via host")
                assert await ws.recv() == "via host"

    run(main)


def test_raw_upgrade_is_tunnelled_with_early_bytes(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        assert b"connection: upgrade" in lower and b"upgrade: foo/1" in lower
        assert b"x-cmux-port-internal" not in lower and b"proxy-authorization" not in lower
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo/1\r\nConnection: Upgrade\r\nX-S: 1\r\n\r\n"
        )
        while data := await reader.read(65536):
            writer.write(data.upper())
        writer.write_eof()

    async def main() -> None:
        async with tcp_server("127.18.0.73", handler) as port, proxy() as p:
            reader, writer = await asyncio.open_connection(*p.addresses[0])
            writer.write(
                b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: foo/1\r\n"
                b"Proxy-Authorization: Basic eA==\r\nX-Cmux-Port-Internal: %d\r\n"
                b"X-Cmux-Workspace-Internal: workspace-73\r\n\r\nearly" % port
            )
            resp = await read_response(reader, head_only=True)
            assert resp.status == 101
            assert resp.header("upgrade") == [b"foo/1"] and resp.header("x-s") == [b"1"]
            assert [v.lower() for v in resp.header("connection")] == [b"upgrade"]
            got = b""
            while len(got) < 5:
                got += await reader.read(100)
            assert got == b"EARLY"
            writer.write(b"more")
            assert await reader.readexactly(4) == b"MORE"
            writer.write_eof()  # half-close: the upstream sees EOF and closes its side
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    run(main)


def test_upgrade_refused_by_upstream_passes_the_answer_and_closes(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 4\r\nConnection: X-H\r\nX-H: 1\r\n\r\nnope"
        )
        await writer.drain()

    async def main() -> None:
        async with tcp_server("127.18.0.74", handler) as port, proxy() as p:
            reader, writer = await asyncio.open_connection(*p.addresses[0])
            writer.write(
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"X-Cmux-Port-Internal: %d\r\nX-Cmux-Workspace-Internal: ws74\r\n\r\n" % port
            )
            resp = await read_response(reader)
            assert (resp.status, resp.body) == (426, b"nope")
            assert resp.header("x-h") == []
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    run(main)


def test_upgrade_errors(run: Runner) -> None:
    async def main() -> None:
        async with proxy() as p:
            reader, writer = await asyncio.open_connection(*p.addresses[0])
            writer.write(
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            resp = await read_response(reader)
            assert (resp.status, resp.body) == (
                400,
                b"missing required header: X-Cmux-Port-Internal",
            )
            writer.close()
            reader, writer = await asyncio.open_connection(*p.addresses[0])
            writer.write(
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"X-Cmux-Port-Internal: 1\r\nX-Cmux-Workspace-Internal: ws75\r\n\r\n"
            )
            resp = await read_response(reader)
            assert resp.status == 502 and resp.body == b"upstream upgrade error: connection refused"
            writer.close()

    run(main)


# --- CONNECT ------------------------------------------------------------------------------------


def test_connect_tunnel_with_half_close_both_ways(run: Runner) -> None:
    done = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # everything the client sends, up to its half-close
        done["got"] = data
        writer.write(b"reply:" + data)  # still flows back after the client's EOF
        await writer.drain()
        writer.write_eof()

    async def main() -> None:
        async with tcp_server("127.18.0.81", handler) as port, proxy() as p:
            reader, writer = await asyncio.open_connection(*p.addresses[0])
            # the CONNECT target is ignored; bytes pipelined after the head are delivered
            writer.write(
                b"CONNECT ignored.example:443 HTTP/1.1\r\nHost: ignored.example:443\r\n"
                b"X-Cmux-Port-Internal: %d\r\nX-Cmux-Workspace-Internal: workspace-81\r\n\r\nping"
                % port
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            writer.write(b" pong")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"reply:ping pong"
            assert done["got"] == b"ping pong"
            writer.close()

    run(main)


def test_connect_half_closed_before_the_tunnel_is_up(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # EOF arrives although the client closed before the 200
        writer.write(b"got:" + data)
        writer.write_eof()

    async def main() -> None:
        async with tcp_server("127.18.0.85", handler) as port, proxy() as p:
            reader, writer = await asyncio.open_connection(*p.addresses[0])
            writer.write(
                b"CONNECT x:1 HTTP/1.1\r\nHost: workspace-85-%d.localhost\r\n\r\nearly" % port
            )
            writer.write_eof()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await asyncio.wait_for(reader.read(), 5) == b"got:early"
            writer.close()

    run(main)


def test_connect_upstream_first_then_eof_from_upstream(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner\n")
        writer.write_eof()  # upstream half-closes first; the client may still send
        assert await reader.readexactly(3) == b"bye"

    async def main() -> None:
        async with tcp_server("127.18.0.82", handler) as port, proxy() as p:
            reader, writer = await asyncio.open_connection(*p.addresses[0])
            writer.write(b"CONNECT x:1 HTTP/1.1\r\nHost: workspace-82-%d.localhost\r\n\r\n" % port)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await asyncio.wait_for(reader.read(), 5) == b"banner\n"  # EOF passed on
            writer.write(b"bye")
            await writer.drain()
            writer.close()

    run(main)


def test_connect_to_a_dead_upstream_is_502_not_200(run: Runner) -> None:
    async def main() -> None:
        async with proxy() as p:
            reader, writer = await asyncio.open_connection(*p.addresses[0])
            writer.write(
                b"CONNECT x:1 HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: 1\r\n"
                b"X-Cmux-Workspace-Internal: ws83\r\n\r\n"
            )
            resp = await read_response(reader)
            assert resp.status == 502
            assert resp.body == b"upstream connect error: connection refused"
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    run(main)


def test_connect_without_route_is_400(run: Runner) -> None:
    async def main() -> None:
        async with proxy() as p:
            reader, writer = await asyncio.open_connection(*p.addresses[0])
            writer.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            resp = await read_response(reader)
            assert (resp.status, resp.body) == (
                400,
                b"missing required header: X-Cmux-Port-Internal",
            )
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    run(main)


def test_connect_large_transfer_both_ways(run: Runner) -> None:
    size = 4 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    async def main() -> None:
        async with tcp_server("127.18.0.84", handler) as port, proxy() as p:
            reader, writer = await asyncio.open_connection(*p.addresses[0])
            writer.write(b"CONNECT x:1 HTTP/1.1\r\nHost: workspace-84-%d.localhost\r\n\r\n" % port)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            payload = bytes(range(256)) * (size // 256)

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            got = await asyncio.wait_for(reader.read(-1), 20)
            await sender
            assert got == payload
            writer.close()

    run(main)
