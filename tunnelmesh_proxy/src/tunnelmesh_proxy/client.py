"""The client side of the proxy: one accepted connection, parsed with httptools.

Theory of operation. Every request head is routed on its own (keep-alive connections may reach
several upstreams). Requests are served one at a time, in order: a request parsed while another
is in flight (pipelining) waits in ``queue`` with its body buffered, and reading pauses until it
is its turn. The active request's head goes to an :class:`~tunnelmesh_proxy.upstream.UpstreamConnection`
taken from the pool (or opened), its body pieces follow as they arrive, and the upstream writes
the response straight back to this connection's transport.

Upgrades (WebSocket, any ``Upgrade``) and ``CONNECT`` leave HTTP: the two transports are joined
into a byte tunnel whose half-closes are passed on in both directions.

Backpressure: when a transport's write buffer fills (``pause_writing``), the other side stops
reading until it drains. Timeouts are checked about once a second by the server's sweeper
(:meth:`ClientConnection.check_timeout`) against a coarse clock (``ctx.now``).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
from tunnelmesh.abc import Upstream
from tunnelmesh.errors import RemoteProtocolError

from tunnelmesh_proxy.http1 import (
    HOP_BY_HOP,
    LAST_CHUNK,
    Framing,
    connection_tokens,
    error_response,
    http_date,
    origin_form,
)
from tunnelmesh_proxy.routing import Router
from tunnelmesh_proxy.upstream import Pool, UpstreamConnection, describe_error

__all__ = ["ClientConnection", "ProxyContext", "Request"]

# kinds of request headers (anything else is forwarded as it is)
_ROUTE = 1  # a routing header that never leaves the proxy
_ROUTE_FWD = 2  # a routing header that is forwarded too (Host)
_HOP = 3
_CONNECTION = 4
_UPGRADE = 5
_TRANSFER_ENCODING = 6
_CONTENT_LENGTH = 7

# pause reasons (bits)
_QUEUE = 1
_UPSTREAM = 2
_PENDING = 4

# phases, for the timeouts
_HEAD = 0  # waiting for, or reading, a request head
_BUSY = 1  # an exchange is in flight
_IDLE = 2  # keep-alive, between requests
_TUNNEL = 3

_RETRYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_HAS_CHUNKED = b"chunked"


class ProxyContext:
    """What every connection of one proxy shares: router, pool, options, the coarse clock.

    Args:
        router: the routing rules.
        header_timeout: seconds a client has to send a complete request head.
        idle_timeout: seconds without a byte either way before a keep-alive connection or an
            exchange in flight is closed.
        tunnel_idle_timeout: the same for tunnels (WebSocket, CONNECT); 0 never closes them.
        connect_timeout: seconds to connect to an upstream.
        pool_size: idle keep-alive connections kept per upstream.
        connector: connects to an upstream that must be reached in a special way (a workspace
            in its own network namespace) and returns the connected socket; None, or a None
            result, means a plain connect.
    """

    def __init__(
        self,
        router: Router,
        *,
        header_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        tunnel_idle_timeout: float = 0.0,
        connect_timeout: float = 5.0,
        pool_size: int = 64,
        connector: Callable[[Upstream], Awaitable[socket.socket | None]] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.router = router
        self.pool = Pool(pool_size, private_headers=router.private_headers)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.tunnel_idle_timeout = tunnel_idle_timeout
        self.connect_timeout = connect_timeout
        self.connector = connector
        self.max_pending = 256 * 1024
        self.max_head = 64 * 1024  # request line + headers (and trailers), like nginx's 8x8k
        self.now = self.loop.time()
        self.closing = False
        self.connections: set[ClientConnection] = set()
        self.requests: dict[tuple[str, str], int] = {}
        """Requests by (kind: http/upgrade/connect, result: routed/no_route); metrics."""
        kinds: dict[bytes, tuple[int, str]] = {n: (_HOP, "") for n in HOP_BY_HOP}
        kinds[b"connection"] = (_CONNECTION, "")
        kinds[b"upgrade"] = (_UPGRADE, "")
        kinds[b"transfer-encoding"] = (_TRANSFER_ENCODING, "")
        kinds[b"content-length"] = (_CONTENT_LENGTH, "")
        # Hop-by-hop and framing headers stay the proxy's: a rule cannot claim them.
        for name in router.private_headers:
            kinds.setdefault(name.encode(), (_ROUTE, name))
        for name in router.header_names - router.private_headers:
            kinds.setdefault(name.encode(), (_ROUTE_FWD, name))
        self.header_kinds = kinds


class HeadTooLarge(RemoteProtocolError):
    """A request head (or trailer section) is over ``ProxyContext.max_head`` bytes."""


class Request:
    """One request, from its parsed head to the end of its exchange."""

    __slots__ = (
        "connect",
        "error",
        "framing",
        "head",
        "http10",
        "is_head",
        "keep_alive",
        "method",
        "pending",
        "pending_size",
        "request_done",
        "response_done",
        "retried",
        "upgrade",
        "upstream",
    )

    method: bytes
    keep_alive: bool
    http10: bool
    is_head: bool
    connect: bool
    upgrade: bool

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.request_done = False
        self.response_done = False
        self.retried = False
        self.error: str | None = None
        self.upstream: Upstream | None = None
        self.head = b""
        self.framing = Framing.NONE


class ClientConnection(asyncio.Protocol):
    """One accepted client connection (see the module docstring)."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.kinds = ctx.header_kinds
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request] = deque()
        self.active: Request | None = None
        self.parsing: Request | None = None
        self.up: UpstreamConnection | None = None
        self.connecting: asyncio.Task[Any] | None = None
        self.write_paused = False
        self.paused = 0
        self.phase = _HEAD
        self.last = self.started = ctx.now
        self.eof = False
        self.upgraded = False  # the parser met an upgrade or CONNECT: the rest is raw bytes
        self.lingering = False
        self.tunnel_eofs = 0
        self._body = False
        self._head_size = 0
        self._url = b""
        self._lines: list[bytes] = []
        self._route: dict[str, str] = {}
        self._has_host = False
        self._conn_tokens: set[bytes] | None = None
        self._upgrade_value = b""
        self._chunked = False
        self._has_length = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ctx.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last = self.ctx.now
        if self.lingering:
            return
        if self.upgraded:
            self._tunnel_data(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            rest = data[exc.args[0] :]
            if rest:
                self._tunnel_data(rest)
        except httptools.HttpParserError as exc:
            self._bad_request(exc)

    def eof_received(self) -> bool | None:
        if self.lingering:
            return None
        if self.phase == _TUNNEL:
            self.tunnel_eof(from_client=True)
            return True
        if self.active is not None or self.queue:
            self.eof = True  # answer what is in flight, then close
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        if self.connecting is not None:
            self.connecting.cancel()
        up, self.up = self.up, None
        if up is not None:
            up.client = None
            if up.transport is not None:
                if up.tunnel:
                    up.transport.close()
                else:
                    up.transport.abort()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._body = False
        self._head_size = 0
        self._url = b""
        self._lines = []
        self._route = {}
        self._has_host = False
        self._conn_tokens = None
        self._chunked = False
        self._has_length = False
        if self.phase == _IDLE:
            self.phase = _HEAD
            self.started = self.ctx.now

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self.ctx.max_head:
            raise HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.ctx.max_head:
            raise HeadTooLarge
        if self._body:
            return  # trailers: dropped, the body is re-framed
        lname = name.lower()
        kind = self.kinds.get(lname)
        if kind is None:
            self._lines.append(name + b": " + value + b"\r\n")
            return
        code = kind[0]
        if code == _ROUTE_FWD:
            self._route.setdefault(kind[1], value.decode("latin-1"))
            self._lines.append(name + b": " + value + b"\r\n")
            if lname == b"host":
                self._has_host = True
        elif code == _ROUTE:
            self._route.setdefault(kind[1], value.decode("latin-1"))
        elif code == _CONTENT_LENGTH:
            self._has_length = True
            self._lines.append(name + b": " + value + b"\r\n")
        elif code == _TRANSFER_ENCODING:
            self._chunked = True
        elif code == _CONNECTION:
            tokens = connection_tokens(value)
            self._conn_tokens = tokens if self._conn_tokens is None else self._conn_tokens | tokens
        elif code == _UPGRADE:
            self._upgrade_value = value

    def on_headers_complete(self) -> None:
        self._body = True
        parser = self.parser
        req = Request()
        req.method = method = parser.get_method()
        req.keep_alive = parser.should_keep_alive()
        req.http10 = parser.get_http_version() == "1.0"
        req.is_head = method == b"HEAD"
        req.connect = method == b"CONNECT"
        req.upgrade = parser.should_upgrade()
        lines = self._lines
        if self._conn_tokens:
            names = self._conn_tokens - {b"close", b"keep-alive", b"upgrade"}
            if names:
                lines = [ln for ln in lines if ln.partition(b":")[0].lower() not in names]
        kind = "connect" if req.connect else "upgrade" if req.upgrade else "http"
        try:
            req.upstream = upstream = self.ctx.router.route(self._route)
        except ValueError as exc:
            req.error = str(exc)
            self._count(kind, "no_route")
        else:
            self._count(kind, "routed")
            head = [method, b" ", origin_form(self._url), b" HTTP/1.1\r\n", *lines]
            if not self._has_host:
                head.append(_host_header(upstream))
            if req.upgrade and not req.connect:
                head.append(b"connection: upgrade\r\nupgrade: " + self._upgrade_value + b"\r\n")
            elif self._chunked:
                req.framing = Framing.CHUNKED
                head.append(b"transfer-encoding: chunked\r\n")
            elif self._has_length:
                req.framing = Framing.LENGTH
            head.append(b"\r\n")
            req.head = b"".join(head)
        self.parsing = req
        if self.active is None:
            self._start(req)
        else:
            self.queue.append(req)
            self._pause(_QUEUE)

    def _count(self, kind: str, result: str) -> None:
        requests = self.ctx.requests
        requests[(kind, result)] = requests.get((kind, result), 0) + 1

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        if req is None or req.error is not None or req.response_done:
            return
        data = b"%x\r\n%b\r\n" % (len(body), body) if req.framing == Framing.CHUNKED else body
        up = self.up
        if up is not None and req is self.active and up.transport is not None:
            up.transport.write(data)
        else:
            req.pending.append(data)
            req.pending_size += len(data)
            if req.pending_size > self.ctx.max_pending:
                self._pause(_PENDING)

    def on_message_complete(self) -> None:
        req = self.parsing
        self.parsing = None
        if req is None or req.upgrade:
            return
        if req.framing == Framing.CHUNKED and req.error is None and not req.response_done:
            up = self.up
            if up is not None and req is self.active and up.transport is not None:
                up.transport.write(LAST_CHUNK)
            else:
                req.pending.append(LAST_CHUNK)
        req.request_done = True
        if req is self.active and req.response_done:
            self._next()

    # --- exchanges ------------------------------------------------------------------------------

    def keep_alive_after(self, req: Request) -> bool:
        """Whether the connection stays open after ``req``'s response."""
        return req.keep_alive and not self.ctx.closing and not self.eof and not req.upgrade

    def _start(self, req: Request) -> None:
        self.active = req
        self.phase = _BUSY
        if req.error is not None:
            keep = self.keep_alive_after(req)
            self.transport.write(error_response(400, req.error, keep_alive=keep))
            req.keep_alive = keep
            self._response_done(req)
            return
        assert req.upstream is not None
        if not req.upgrade:
            up = self.ctx.pool.acquire(req.upstream)
            if up is not None:
                self._attach(up, req)
                return
        self.connecting = self.ctx.loop.create_task(self._connect(req))

    async def _connect(self, req: Request) -> None:
        upstream = req.upstream
        assert upstream is not None
        ctx = self.ctx
        try:
            async with asyncio.timeout(ctx.connect_timeout):
                sock = await ctx.connector(upstream) if ctx.connector is not None else None
                if sock is not None:
                    _, up = await ctx.loop.create_connection(
                        lambda: UpstreamConnection(ctx.pool, upstream), sock=sock
                    )
                else:
                    _, up = await ctx.loop.create_connection(
                        lambda: UpstreamConnection(ctx.pool, upstream),
                        _host_literal(upstream.host),
                        upstream.port,
                    )
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError) as exc:
            self.connecting = None
            if self.transport.is_closing():
                return
            self._fail(req, describe_error(exc))
            return
        self.connecting = None
        if self.transport.is_closing():
            up.transport.close()  # type: ignore[union-attr]
            return
        if req.connect:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nconnection: upgrade\r\n" + http_date() + b"\r\n"
            )
            up.begin(self, req)
            up.tunnel = True
            self.up = up
            self.tunnel_established(up)
            return
        self._attach(up, req)

    def _attach(self, up: UpstreamConnection, req: Request) -> None:
        self.up = up
        up.begin(self, req)
        transport = up.transport
        assert transport is not None
        if req.pending:
            transport.writelines([req.head, *req.pending])
            req.pending.clear()
            req.pending_size = 0
            self._resume(_PENDING)
        else:
            transport.write(req.head)

    def _fail(self, req: Request, reason: str) -> None:
        """The upstream could not be reached, or failed before answering: 502."""
        if req.connect:
            text = f"upstream connect error: {reason}"
        elif req.upgrade:
            text = f"upstream upgrade error: {reason}"
        else:
            text = f"upstream request error: {reason}"
        keep = self.keep_alive_after(req)
        req.keep_alive = keep
        self.transport.write(error_response(502, text, keep_alive=keep))
        req.pending.clear()
        self._resume(_PENDING)
        self._response_done(req)

    def upstream_failed(self, up: UpstreamConnection, reason: str) -> None:
        """``up`` failed before a response head reached the client."""
        req = self.active
        if up is not self.up or req is None:
            return
        self.up = None
        up.client = None
        if (
            up.reused
            and not up.got_bytes
            and not req.retried
            and req.framing == Framing.NONE
            and req.method in _RETRYABLE
            and not req.upgrade
        ):
            # A pooled connection the upstream had closed meanwhile: try once more, fresh.
            req.retried = True
            self.connecting = self.ctx.loop.create_task(self._connect(req))
            return
        self._fail(req, reason)

    def response_finished(self, up: UpstreamConnection, reusable: bool) -> None:
        """``up`` delivered a complete response to the active request."""
        req = self.active
        self.up = None
        if up.transport is not None:
            if self.write_paused:
                up.transport.resume_reading()
            if reusable:
                self.ctx.pool.release(up, self.ctx.now)
            else:
                up.transport.close()
        if req is not None:
            self._response_done(req)

    def _response_done(self, req: Request) -> None:
        req.response_done = True
        if req.request_done or req.upgrade:
            self._next()
        # else: the rest of the request body is read and dropped, then _next() runs

    def _next(self) -> None:
        req = self.active
        self.active = None
        self._resume(_PENDING)
        if req is not None and not req.keep_alive:
            if req.error is not None or self.upgraded:
                self._linger_close()  # the client may still be sending: let it see the answer
            else:
                self.transport.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            if not self.queue:
                self._resume(_QUEUE)
            self._start(nxt)
            return
        if self.eof or self.ctx.closing:
            self.transport.close()
            return
        self.phase = _HEAD if self.parsing is not None else _IDLE
        self.last = self.started = self.ctx.now

    def _bad_request(self, exc: Exception) -> None:
        if self.active is None and not self.queue:
            if isinstance(exc.__context__, HeadTooLarge):
                answer = error_response(431, "request head too large", keep_alive=False)
            else:
                answer = error_response(400, f"malformed request: {exc}", keep_alive=False)
            self.transport.write(answer)
            self._linger_close()
        else:
            self.transport.abort()

    def _linger_close(self) -> None:
        """Close after an answer the client may not have waited for (nginx's lingering close).

        Closing a socket with unread input sends a RST, which can destroy the answer before the
        client reads it; so send FIN, drop what still arrives, and abort after two seconds.
        """
        self.lingering = True
        self._resume(self.paused)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.ctx.loop.call_later(2.0, self.transport.abort)
        else:
            self.transport.close()

    # --- flow control ---------------------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self.paused:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.transport.is_closing():
                self.transport.resume_reading()

    def pause_for_upstream(self) -> None:
        self._pause(_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self._resume(_UPSTREAM)

    # --- tunnels --------------------------------------------------------------------------------

    def _tunnel_data(self, data: bytes) -> None:
        up = self.up
        if self.phase == _TUNNEL and up is not None and up.transport is not None:
            up.transport.write(data)
            return
        req = self.active if self.active is not None and self.active.upgrade else None
        if req is None and self.queue:
            req = self.queue[-1]
        if req is None or req.error is not None:
            return
        req.pending.append(data)
        req.pending_size += len(data)
        if req.pending_size > self.ctx.max_pending:
            self._pause(_PENDING)

    def tunnel_established(self, up: UpstreamConnection) -> None:
        """The upstream accepted the upgrade (101) or the CONNECT: bytes flow both ways now."""
        self.phase = _TUNNEL
        req = self.active
        if req is not None and req.pending and up.transport is not None:
            up.transport.writelines(req.pending)
            req.pending.clear()
        self._resume(_PENDING)
        if self.eof:  # the client half-closed before the tunnel was up
            self.tunnel_eof(from_client=True)

    def tunnel_eof(self, *, from_client: bool) -> None:
        """One direction of the tunnel ended: pass the half-close on."""
        self.tunnel_eofs += 1
        up = self.up
        if self.tunnel_eofs >= 2 or up is None or up.transport is None:
            self.transport.close()
            if up is not None and up.transport is not None:
                up.transport.close()
            return
        target = up.transport if from_client else self.transport
        if target.can_write_eof():
            target.write_eof()

    def abort(self) -> None:
        """The upstream died in the middle of a response: the client must see it cut short."""
        self.up = None
        self.transport.abort()

    def tunnel_lost(self) -> None:
        self.up = None
        self.transport.close()

    # --- timeouts and shutdown --------------------------------------------------------------

    def check_timeout(self, now: float) -> None:
        """Close the connection if it has been idle or slow for too long (the sweeper calls)."""
        ctx = self.ctx
        phase = self.phase
        if phase == _HEAD:
            if now - self.started > ctx.header_timeout:
                self.transport.abort()
        elif phase == _TUNNEL:
            if ctx.tunnel_idle_timeout > 0 and now - self.last > ctx.tunnel_idle_timeout:
                self.transport.abort()
        elif now - self.last > ctx.idle_timeout:
            self.transport.abort()

    def shutdown(self) -> None:
        """The proxy is stopping: close now if idle, else after the response in flight."""
        if self.phase in (_IDLE, _TUNNEL) or (self.phase == _HEAD and self.parsing is None):
            self.transport.close()


def _host_header(upstream: Upstream) -> bytes:
    """A Host line for a request that came without one: the upstream's address."""
    host = upstream.host
    if ":" in host and host[:1] != "[":
        host = f"[{host}]"
    return f"host: {host}:{upstream.port}\r\n".encode()


def _host_literal(host: str) -> str:
    """IPv6 literals lose their brackets for connect() and gain them in a Host header."""
    return host[1:-1] if host[:1] == "[" and host[-1:] == "]" else host
