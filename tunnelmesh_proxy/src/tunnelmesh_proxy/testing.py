"""Test helpers for the proxy: a tiny recording HTTP upstream and a raw HTTP client reader.

Shipped in the package so that cross-distribution tests (a mesh of nodes behind proxies) use
the same helpers as the proxy's own suite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools

__all__ = [
    "LOOPS",
    "HttpUpstream",
    "Received",
    "Response",
    "read_response",
    "request_bytes",
    "runner",
]

LOOPS = ("asyncio", "uvloop")


def runner(loop: str, timeout: float = 30.0) -> Callable[[Callable[[], Awaitable[Any]]], Any]:
    """A function that runs ``fn()`` to completion on a fresh ``loop`` ("asyncio" or "uvloop")."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop

    def run(fn: Callable[[], Awaitable[Any]]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(fn(), timeout))

    return run


@dataclass
class Received:
    """A request as the upstream saw it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    local: str

    def header(self, name: str) -> list[bytes]:
        """Every value of a header, in order."""
        lname = name.lower().encode()
        return [v for n, v in self.headers if n.lower() == lname]


@dataclass
class Response:
    """A response as the client saw it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False

    def header(self, name: str) -> list[bytes]:
        lname = name.lower().encode()
        return [v for n, v in self.headers if n.lower() == lname]


Responder = Callable[[Received], bytes]


def default_responder(req: Received) -> bytes:
    body = b"%b %b %b via %b" % (req.local.encode(), req.method, req.target, req.body[:64])
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-upstream: %b\r\n\r\n%b" % (
        len(body),
        req.local.encode(),
        body,
    )


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, server: HttpUpstream) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.server.open.add(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self._headers: list[tuple[bytes, bytes]] = []
        self._url = b""
        self._body: list[bytes] = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        local = self.transport.get_extra_info("sockname")[0]
        req = Received(
            self.parser.get_method(), self._url, self._headers, b"".join(self._body), local
        )
        self.server.received.append(req)
        out = self.server.responder(req)
        if out:
            self.transport.write(out)
        if self.server.close_after:
            self.transport.close()


@dataclass
class HttpUpstream:
    """A recording HTTP/1.1 upstream on ``host`` (port 0: the OS picks a free one).

    ``responder`` returns the raw response bytes for each request (default: 200 with a body
    naming the upstream's IP, method, target and the start of the request body).
    """

    host: str = "127.18.0.1"
    responder: Responder = default_responder
    close_after: bool = False
    port: int = 0
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    open: set[asyncio.Transport] = field(default_factory=set)
    _server: asyncio.Server | None = None

    async def start(self) -> HttpUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _UpstreamProtocol(self), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self.open):
                transport.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def __aenter__(self) -> HttpUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def request_bytes(
    target: str = "/",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    *,
    method: str = "GET",
    body: bytes = b"",
    version: str = "1.1",
    host: str | None = "proxy.test",
) -> bytes:
    """A raw request; adds Content-Length when there is a body and none was given."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in items]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in items):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _ResponseReader:
    def __init__(self, head_only: bool) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = False
        self.head_done = False
        self.head_only = head_only
        self.chunked = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.append((name, value))
            if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True

    def on_headers_complete(self) -> None:
        self.head_done = True
        if self.head_only:
            self.done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


async def read_response(
    reader: asyncio.StreamReader,
    *,
    head_only: bool = False,
    on_first_body: Callable[[bytes], Awaitable[None]] | None = None,
    timeout: float = 10.0,
) -> Response:
    """Read one response; ``head_only`` for HEAD requests (1xx responses come back as such).

    The body ends by Content-Length, chunked coding or EOF. Read one response at a time: bytes
    after it in the same read are lost, except after a 101 (they stay in ``reader``).
    """
    async with asyncio.timeout(timeout):
        state = _ResponseReader(head_only)
        parser = httptools.HttpResponseParser(state)
        seen_first = False
        while not state.done:
            data = await reader.read(65536)
            if not data:
                break
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                reader._buffer[:0] = data[exc.args[0] :]  # type: ignore[attr-defined]
                state.done = True
            if on_first_body is not None and state.body and not seen_first:
                seen_first = True
                await on_first_body(state.body[0])
        return Response(
            parser.get_status_code(), state.headers, b"".join(state.body), state.chunked
        )
