"""The proxy over loopback, on asyncio and uvloop: routing, errors, headers, streaming, pool.

Upstream servers bind 127.18.x.y (the workspace IPs) on ports the OS picks; the proxy binds
127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tunnelmesh_proxy.mesh import MeshPeerRule
from tunnelmesh_proxy.routing import CmuxRule, Router
from tunnelmesh_proxy.server import ProxyServer
from tunnelmesh_proxy.testing import (
    LOOPS,
    HttpUpstream,
    Received,
    Response,
    read_response,
    request_bytes,
    runner,
)

pytest.importorskip("uvloop")

Runner = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Runner:
    return runner(request.param)


PEERS = {"web": "127.18.7.7"}


@contextlib.asynccontextmanager
async def proxy(upstream_host: str = "127.0.0.1", **options: Any) -> AsyncIterator[ProxyServer]:
    router = Router([MeshPeerRule(PEERS.get), CmuxRule(upstream_host)])
    server = ProxyServer(router, **options)
    await server.listen([("127.0.0.1", 0)])
    try:
        yield server
    finally:
        await server.aclose(grace=1.0)


async def connect(server: ProxyServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*server.addresses[0])


async def fetch(server: ProxyServer, raw: bytes, *, head_only: bool = False) -> Response:
    reader, writer = await connect(server)
    try:
        writer.write(raw)
        return await read_response(reader, head_only=head_only)
    finally:
        writer.close()


def ws_headers(up: HttpUpstream, workspace: str | None = None) -> dict[str, str]:
    headers = {"X-Cmux-Port-Internal": str(up.port)}
    if workspace is not None:
        headers["X-Cmux-Workspace-Internal"] = workspace
    return headers


# --- routing -----------------------------------------------------------------------------------


def test_workspace_header_routes_to_the_workspace_ip(run: Runner) -> None:
    async def main() -> None:
        async with (
            HttpUpstream("127.18.0.1") as a,
            HttpUpstream("127.18.176.32") as b,
            proxy() as p,
        ):
            resp = await fetch(p, request_bytes("/api?x=1", ws_headers(a, "workspace-1")))
            assert resp.status == 200
            assert resp.body.startswith(b"127.18.0.1 GET /api?x=1")
            resp = await fetch(p, request_bytes("/", ws_headers(b, "workspace-a")))
            assert resp.body.startswith(b"127.18.176.32 GET /")

    run(main)


def test_port_header_alone_goes_to_the_upstream_host(run: Runner) -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.0.9") as up, proxy(upstream_host="127.18.0.9") as p:
            resp = await fetch(p, request_bytes("/", ws_headers(up)))
            assert resp.status == 200 and resp.body.startswith(b"127.18.0.9 GET /")

    run(main)


def test_host_subdomain_routing(run: Runner) -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.0.3") as up, proxy() as p:
            host = f"workspace-3-{up.port}.localhost:8080"
            resp = await fetch(p, request_bytes("/h", host=host))
            assert resp.status == 200 and resp.body.startswith(b"127.18.0.3 GET /h")
            # the Host is forwarded unchanged
            assert up.received[-1].header("host") == [host.encode()]
            # a port header beats the Host's port, the Host still gives the workspace
            other = "workspace-3-1.localhost"
            resp = await fetch(
                p, request_bytes("/", {"X-Cmux-Port-Internal": str(up.port)}, host=other)
            )
            assert resp.status == 200

    run(main)


def test_mesh_peer_header_routes_to_the_peer(run: Runner) -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.7.7") as up, proxy() as p:
            headers = {"X-Tunnelmesh-Peer": "web", "X-Cmux-Port-Internal": str(up.port)}
            resp = await fetch(p, request_bytes("/m", headers))
            assert resp.status == 200 and resp.body.startswith(b"127.18.7.7 GET /m")
            assert up.received[-1].header("x-tunnelmesh-peer") == []
            resp = await fetch(
                p, request_bytes("/", {"X-Tunnelmesh-Peer": "nope", "X-Cmux-Port-Internal": "80"})
            )
            assert (resp.status, resp.body) == (400, b"unknown peer: nope")

    run(main)


def test_same_port_in_two_workspaces_is_isolated(run: Runner) -> None:
    async def main() -> None:
        async with (
            HttpUpstream("127.18.0.11") as a,
            HttpUpstream("127.18.0.12", port=a.port) as b,
            proxy() as p,
        ):
            assert a.port == b.port
            ra = await fetch(p, request_bytes("/", ws_headers(a, "workspace-11")))
            rb = await fetch(p, request_bytes("/", ws_headers(b, "workspace-12")))
            assert ra.body.startswith(b"127.18.0.11") and rb.body.startswith(b"127.18.0.12")
            rc = await fetch(p, request_bytes("/", ws_headers(a, "workspace-13")))
            assert rc.status == 502

    run(main)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "host", "body"),
    [
        ({}, "127.0.0.1:8080", b"missing required header: X-Cmux-Port-Internal"),
        ({"X-Cmux-Port-Internal": ""}, "x", b"header value cannot be empty"),
        ({"X-Cmux-Port-Internal": "0"}, "x", b"invalid port in X-Cmux-Port-Internal"),
        ({"X-Cmux-Port-Internal": "70000"}, "x", b"invalid port in X-Cmux-Port-Internal"),
        ({"X-Cmux-Port-Internal": "80\xe9"}, "x", b"invalid header value (not UTF-8)"),
        (
            {"X-Cmux-Port-Internal": "80", "X-Cmux-Workspace-Internal": " "},
            "x",
            b"X-Cmux-Workspace-Internal cannot be empty",
        ),
        (
            {"X-Cmux-Port-Internal": "80", "X-Cmux-Workspace-Internal": "w-99999999999"},
            "x",
            b"invalid workspace name: w-99999999999",
        ),
    ],
)
def test_bad_headers_get_400_with_the_reason(
    run: Runner, headers: dict[str, str], host: str, body: bytes
) -> None:
    async def main() -> None:
        async with proxy() as p:
            reader, writer = await connect(p)
            writer.write(request_bytes("/", headers, host=host))
            resp = await read_response(reader)
            assert (resp.status, resp.body) == (400, body)
            assert resp.header("content-type") == [b"text/plain; charset=utf-8"]
            # the connection stays usable
            writer.write(request_bytes("/", headers, host=host))
            assert (await read_response(reader)).status == 400
            writer.close()

    run(main)


def test_502_when_unreachable_then_200_once_the_upstream_runs(run: Runner) -> None:
    async def main() -> None:
        async with proxy() as p:
            probe = HttpUpstream("127.18.0.21")
            await probe.start()
            port = probe.port
            await probe.aclose()
            headers = {
                "X-Cmux-Port-Internal": str(port),
                "X-Cmux-Workspace-Internal": "workspace-21",
            }
            resp = await fetch(p, request_bytes("/", headers))
            assert resp.status == 502
            assert resp.body == b"upstream request error: connection refused"
            async with HttpUpstream("127.18.0.21", port=port):
                assert (await fetch(p, request_bytes("/", headers))).status == 200

    run(main)


def test_upstream_closing_without_answer_is_502(run: Runner) -> None:
    async def main() -> None:
        up = HttpUpstream("127.18.0.22", responder=lambda r: b"", close_after=True)
        async with up, proxy() as p:
            resp = await fetch(p, request_bytes("/", ws_headers(up, "workspace-22")))
            assert resp.status == 502
            assert resp.body.startswith(b"upstream request error: ")

    run(main)


def test_response_cut_short_by_the_upstream_cuts_the_client(run: Runner) -> None:
    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.18.0.23", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, proxy() as p:
            reader, writer = await connect(p)
            headers = {
                "X-Cmux-Port-Internal": str(port),
                "X-Cmux-Workspace-Internal": "workspace-23",
            }
            writer.write(request_bytes("/", headers))
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"content-length: 100" in head
            data = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := await asyncio.wait_for(reader.read(1000), 5):
                    data += chunk
            assert data == b"only ten b"  # then the connection ends: the client knows
            writer.close()

    run(main)


def test_oversized_request_head_gets_431_and_close(run: Runner) -> None:
    async def main() -> None:
        async with proxy() as p:
            reader, writer = await connect(p)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            for i in range(100):  # 100 KiB of headers, never finished
                writer.write(b"X-Filler-%d: %b\r\n" % (i, b"a" * 1024))
            resp = await read_response(reader)
            assert (resp.status, resp.body) == (431, b"request head too large")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    run(main)


def test_ipv6_upstream_host_with_or_without_brackets(run: Runner) -> None:
    async def main() -> None:
        try:
            up = await HttpUpstream("::1").start()
        except OSError:
            pytest.skip("no IPv6 loopback here")
        try:
            for host in ("::1", "[::1]"):
                async with proxy(upstream_host=host) as p:
                    resp = await fetch(
                        p, request_bytes("/", ws_headers(up), host=None, version="1.0")
                    )
                    assert resp.status == 200 and resp.body.startswith(b"::1 GET /")
                    assert up.received[-1].header("host") == [f"[::1]:{up.port}".encode()]
        finally:
            await up.aclose()

    run(main)


def test_malformed_request_gets_400_and_close(run: Runner) -> None:
    async def main() -> None:
        async with proxy() as p:
            reader, writer = await connect(p)
            writer.write(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
            resp = await read_response(reader)
            assert resp.status == 400 and resp.header("connection") == [b"close"]
            assert await reader.read() == b""
            writer.close()

    run(main)


# --- keep-alive, headers -------------------------------------------------------------------------


def test_keep_alive_routes_each_request_on_its_own(run: Runner) -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.0.31") as a, HttpUpstream("127.18.0.32") as b, proxy() as p:
            reader, writer = await connect(p)
            for i in range(3):
                for up, ws in ((a, "workspace-31"), (b, "workspace-32")):
                    writer.write(request_bytes(f"/{i}", ws_headers(up, ws)))
                    resp = await read_response(reader)
                    assert resp.body.startswith(f"{up.host} GET /{i}".encode())
            writer.close()
            # one upstream connection each, reused from the pool
            assert (a.connections, b.connections) == (1, 1)

    run(main)


def test_hop_by_hop_and_routing_headers_are_not_forwarded(run: Runner) -> None:
    def responder(req: Received) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: X-Resp-Hop\r\nX-Resp-Hop: 1\r\n"
            b"Keep-Alive: timeout=5\r\nX-Cmux-Port-Internal: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
            b"Trailer: X-T\r\n\r\nok"
        )

    async def main() -> None:
        async with HttpUpstream("127.18.0.33", responder=responder) as up, proxy() as p:
            headers = [
                *ws_headers(up, "workspace-33").items(),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Trailer", "X-T"),
                ("Proxy-Authorization", "Basic eA=="),
                ("Proxy-Connection", "keep-alive"),
                ("Upgrade", "h2c"),
                ("Cookie", "a=1"),
                ("Cookie", "b=2"),
                ("X-End", "1"),
            ]
            resp = await fetch(p, request_bytes("http://example.test/abs?q=1", headers))
            assert resp.status == 200
            got = up.received[-1]
            assert got.target == b"/abs?q=1"
            names = {n.lower() for n, _ in got.headers}
            for hop in (
                b"connection",
                b"x-hop",
                b"keep-alive",
                b"te",
                b"trailer",
                b"proxy-authorization",
                b"proxy-connection",
                b"upgrade",
                b"x-cmux-port-internal",
                b"x-cmux-workspace-internal",
            ):
                assert hop not in names
            assert got.header("cookie") == [b"a=1", b"b=2"]
            assert got.header("x-end") == [b"1"]
            assert got.header("host") == [b"proxy.test"]
            # no X-Forwarded-*, Via or Forwarded is added
            assert not names & {b"x-forwarded-for", b"via", b"forwarded"}
            rnames = {n.lower() for n, _ in resp.headers}
            for hop in (
                b"connection",
                b"x-resp-hop",
                b"keep-alive",
                b"trailer",
                b"x-cmux-port-internal",
            ):
                assert hop not in rnames
            assert resp.header("set-cookie") == [b"a=1", b"b=2"]
            assert len(resp.header("date")) == 1

    run(main)


def test_request_without_host_gets_the_upstream_address(run: Runner) -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.0.34") as up, proxy() as p:
            resp = await fetch(
                p, request_bytes("/", ws_headers(up, "workspace-34"), version="1.0", host=None)
            )
            assert resp.status == 200
            assert up.received[-1].header("host") == [f"127.18.0.34:{up.port}".encode()]

    run(main)


def test_http10_client_gets_a_close_delimited_body(run: Runner) -> None:
    def responder(req: Received) -> bytes:
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"

    async def main() -> None:
        async with HttpUpstream("127.18.0.35", responder=responder) as up, proxy() as p:
            reader, writer = await connect(p)
            writer.write(request_bytes("/", ws_headers(up, "workspace-35"), version="1.0"))
            resp = await read_response(reader)
            assert (resp.status, resp.body, resp.chunked) == (200, b"hello", False)
            assert resp.header("connection") == [b"close"]
            assert await reader.read() == b""
            writer.close()

    run(main)


def test_http10_keep_alive_is_honoured(run: Runner) -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.0.36") as up, proxy() as p:
            reader, writer = await connect(p)
            headers = {**ws_headers(up, "workspace-36"), "Connection": "keep-alive"}
            for _ in range(2):
                writer.write(request_bytes("/", headers, version="1.0"))
                resp = await read_response(reader)
                assert resp.status == 200 and resp.header("connection") == [b"keep-alive"]
            writer.close()

    run(main)


def test_connection_close_from_client_closes_after_the_response(run: Runner) -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.0.37") as up, proxy() as p:
            reader, writer = await connect(p)
            writer.write(
                request_bytes("/", {**ws_headers(up, "workspace-37"), "Connection": "close"})
            )
            resp = await read_response(reader)
            assert resp.status == 200 and resp.header("connection") == [b"close"]
            assert await reader.read() == b""
            writer.close()

    run(main)


def test_pipelined_requests_are_answered_in_order(run: Runner) -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.0.41") as a, HttpUpstream("127.18.0.42") as b, proxy() as p:
            reader, writer = await connect(p)
            writer.write(
                request_bytes("/1", ws_headers(a, "workspace-41"))
                + request_bytes("/2", ws_headers(b, "workspace-42"), method="POST", body=b"xyz")
                + request_bytes("/3", ws_headers(a, "workspace-41"))
            )
            data = b""
            while data.count(b"HTTP/1.1 200") < 3 or not data.endswith(b"via "):
                chunk = await reader.read(65536)
                assert chunk
                data += chunk
            first, second, third = data.split(b"HTTP/1.1 200 OK")[1:]
            assert b"127.18.0.41 GET /1" in first
            assert b"127.18.0.42 POST /2 via xyz" in second
            assert b"127.18.0.41 GET /3" in third
            writer.close()

    run(main)


def test_head_204_304_have_no_body_and_keep_the_connection(run: Runner) -> None:
    def responder(req: Received) -> bytes:
        if req.method == b"HEAD":
            return b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
        if req.target == b"/204":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if req.target == b"/304":
            return b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"

    async def main() -> None:
        async with HttpUpstream("127.18.0.43", responder=responder) as up, proxy() as p:
            reader, writer = await connect(p)
            headers = ws_headers(up, "workspace-43")
            writer.write(request_bytes("/", headers, method="HEAD"))
            resp = await read_response(reader, head_only=True)
            assert resp.status == 200 and resp.header("content-length") == [b"1234"]
            for target, status in (("/204", 204), ("/304", 304), ("/", 200)):
                writer.write(request_bytes(target, headers))
                resp = await read_response(reader)
                assert resp.status == status
                assert resp.body == (b"body" if status == 200 else b"")
                assert resp.header("transfer-encoding") == []
            writer.close()
            assert up.connections == 1

    run(main)


def test_stale_pooled_connection_is_retried_for_get(run: Runner) -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.0.44") as up, proxy() as p:
            headers = ws_headers(up, "workspace-44")
            assert (await fetch(p, request_bytes("/", headers))).status == 200
            for transport in list(up.open):  # the upstream drops its idle keep-alive connection
                transport.abort()
            await asyncio.sleep(0)  # the proxy may or may not have seen the close yet
            assert (await fetch(p, request_bytes("/again", headers))).status == 200
            assert up.connections == 2

    run(main)


def test_expect_100_continue_passes_through(run: Runner) -> None:
    async def main() -> None:
        seen = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"expect: 100-continue" in head.lower()
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await reader.readexactly(5)
            seen.set()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n" + body)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.18.0.45", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, proxy() as p:
            reader, writer = await connect(p)
            writer.write(
                b"PUT / HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: %d\r\nX-Cmux-Workspace-Internal: ws45\r\n"
                b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n" % port
            )
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            resp = await read_response(reader)
            assert (resp.status, resp.body) == (200, b"hello") and seen.is_set()
            writer.close()

    run(main)


# --- streaming ---------------------------------------------------------------------------------


def test_request_body_streams_before_it_is_complete(run: Runner) -> None:
    async def main() -> None:
        first = asyncio.get_running_loop().create_future()
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"transfer-encoding: chunked" in head.lower()
            first.set_result(await reader.readuntil(b"first\r\n"))
            rest = await reader.readuntil(b"0\r\n\r\n")
            assert b"second" in rest
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()
            done.set()

        server = await asyncio.start_server(handle, "127.18.0.51", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, proxy() as p:
            reader, writer = await connect(p)
            writer.write(
                b"POST /up HTTP/1.1\r\nHost: x\r\nX-Cmux-Port-Internal: %d\r\n"
                b"X-Cmux-Workspace-Internal: workspace-51\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nfirst\r\n" % port
            )
            # the upstream sees the first chunk while the client still holds the rest back
            await asyncio.wait_for(first, 5)
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            resp = await read_response(reader)
            assert (resp.status, resp.body) == (200, b"ok")
            await done.wait()
            writer.close()

    run(main)


def test_response_body_streams_before_it_is_complete(run: Runner) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: one\n\n")
            await writer.drain()
            await release.wait()
            writer.write(b"data: two\n\n")
            writer.close()  # close-delimited body: re-framed as chunked for the client

        server = await asyncio.start_server(handle, "127.18.0.52", 0)
        port = server.sockets[0].getsockname()[1]

        async def on_first(body: bytes) -> None:
            assert body == b"data: one\n\n"
            release.set()

        async with server, proxy() as p:
            reader, writer = await connect(p)
            headers = {
                "X-Cmux-Port-Internal": str(port),
                "X-Cmux-Workspace-Internal": "workspace-52",
            }
            writer.write(request_bytes("/events", headers))
            resp = await read_response(reader, on_first_body=on_first)
            assert release.is_set()
            assert resp.chunked and resp.body == b"data: one\n\ndata: two\n\n"
            # the client connection stays open for the next request
            writer.write(request_bytes("/", {"X-Cmux-Port-Internal": "0"}))
            assert (await read_response(reader)).status == 400
            writer.close()

    run(main)


def test_large_bodies_both_ways_with_a_slow_reader(run: Runner) -> None:
    size = 8 * 1024 * 1024

    def responder(req: Received) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(req.body), req.body)

    async def main() -> None:
        async with HttpUpstream("127.18.0.53", responder=responder) as up, proxy() as p:
            body = bytes(range(256)) * (size // 256)
            reader, writer = await connect(p)
            writer.write(
                request_bytes("/", ws_headers(up, "workspace-53"), method="POST", body=body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            got = bytearray()
            while len(got) < size:
                got += await reader.read(65536)
                if len(got) < 1024 * 1024:
                    await asyncio.sleep(0.001)  # read slowly for a while: backpressure upstream
            assert bytes(got) == body
            writer.close()

    run(main)


def test_chunked_response_is_rechunked_with_repeated_headers(run: Runner) -> None:
    def responder(req: Received) -> bytes:
        return (
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
            b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"
        )

    async def main() -> None:
        async with HttpUpstream("127.18.0.54", responder=responder) as up, proxy() as p:
            resp = await fetch(p, request_bytes("/", ws_headers(up, "workspace-54")))
            assert (resp.status, resp.body, resp.chunked) == (201, b"abcdefg", True)
            assert resp.header("x-a") == [b"1", b"2"]

    run(main)


# --- timeouts and shutdown ----------------------------------------------------------------------


def test_slow_header_is_cut_off(run: Runner) -> None:
    async def main() -> None:
        async with proxy(header_timeout=0.2) as p:
            reader, writer = await connect(p)
            writer.write(b"GET / HTTP/1.1\r\nHost: slow\r\n")  # never finishes the head
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    run(main)


def test_idle_keep_alive_connection_is_closed(run: Runner) -> None:
    async def main() -> None:
        async with HttpUpstream("127.18.0.61") as up, proxy(idle_timeout=0.2) as p:
            reader, writer = await connect(p)
            writer.write(request_bytes("/", ws_headers(up, "workspace-61")))
            assert (await read_response(reader)).status == 200
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    run(main)


def test_graceful_shutdown_finishes_the_exchange_in_flight(run: Runner) -> None:
    async def main() -> None:
        got_request = asyncio.Event()
        release = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            got_request.set()
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.18.0.62", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            router = Router([CmuxRule()])
            p = ProxyServer(router)
            await p.listen([("127.0.0.1", 0)])
            addr = p.addresses[0]
            idle_reader, idle_writer = await asyncio.open_connection(*addr)
            reader, writer = await asyncio.open_connection(*addr)
            headers = {
                "X-Cmux-Port-Internal": str(port),
                "X-Cmux-Workspace-Internal": "workspace-62",
            }
            writer.write(request_bytes("/", headers))
            await got_request.wait()
            closing = asyncio.create_task(p.aclose(grace=10))
            assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # idle: closed at once
            with pytest.raises(OSError):
                await asyncio.open_connection(*addr)  # no longer accepting
            release.set()
            resp = await read_response(reader)
            assert (resp.status, resp.body) == (200, b"late")
            assert resp.header("connection") == [b"close"]
            await closing
            writer.close()
            idle_writer.close()

    run(main)
