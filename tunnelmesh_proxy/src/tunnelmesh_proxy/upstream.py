"""The upstream side of the proxy: one connection to one service, and the keep-alive pool.

An :class:`UpstreamConnection` serves one exchange at a time for a
:class:`~tunnelmesh_proxy.client.ClientConnection`: it parses the response with httptools and
writes the rewritten head and the body pieces straight to the client's transport as they
arrive (no buffering). Between exchanges it waits in the :class:`Pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import TYPE_CHECKING

import httptools
from tunnelmesh.abc import Upstream

from tunnelmesh_proxy.http1 import HOP_BY_HOP, LAST_CHUNK, Framing, connection_tokens, http_date

if TYPE_CHECKING:
    from tunnelmesh_proxy.client import ClientConnection, Request

__all__ = ["Pool", "UpstreamConnection", "describe_error"]

_HOP_SKIP = 1
_HOP_CONNECTION = 2
_HOP_UPGRADE = 3
_CONTENT_LENGTH = 4
_DATE = 5
_TRANSFER_ENCODING = 6

_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def describe_error(exc: BaseException | None) -> str:
    """A short text for an upstream failure, for the body of a 502."""
    if exc is None:
        return "connection closed before the response was complete"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def status_line(status: int, reason: bytes) -> bytes:
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %b\r\n" % key
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[key] = line
    return line


def response_header_kinds(private: frozenset[str]) -> dict[bytes, int]:
    """How the upstream connection treats each special response header (by lower-case name)."""
    kinds = dict.fromkeys(HOP_BY_HOP, _HOP_SKIP)
    kinds.update(dict.fromkeys((n.encode() for n in private), _HOP_SKIP))
    kinds[b"connection"] = _HOP_CONNECTION
    kinds[b"upgrade"] = _HOP_UPGRADE
    kinds[b"transfer-encoding"] = _TRANSFER_ENCODING
    kinds[b"content-length"] = _CONTENT_LENGTH
    kinds[b"date"] = _DATE
    return kinds


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an upstream service (see the module docstring)."""

    def __init__(self, pool: Pool, key: Upstream) -> None:
        self.pool = pool
        self.key = key
        self.kinds = pool.header_kinds
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.req: Request | None = None
        self.idle_since = 0.0
        self.reused = False
        self.tunnel = False
        self.lost = False
        self.wbuf: list[bytes] = []
        self.sink: asyncio.Transport = None  # type: ignore[assignment]  # the client's transport
        self._reset()

    def _reset(self) -> None:
        self.got_bytes = False
        self.out: int | None = None  # framing towards the client, once the head is written
        self.upstream_framing = Framing.NONE
        self.finish_after_feed = False
        self.keep = True
        self._lines: list[bytes] = []
        self._reason = b""
        self._conn_tokens: set[bytes] | None = None
        self._upgrade_value: bytes | None = None
        self._has_date = False
        self._informational = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # an idle connection must not speak: drop it
            self.transport.close()  # type: ignore[union-attr]
            return
        client.last = client.ctx.now
        if self.tunnel:
            client.transport.write(data)
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._switch_to_tunnel(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            self.keep = False
            self._flush()
            self.transport.abort()  # type: ignore[union-attr]
            if self.client is not None and self.out is None:
                self.client.upstream_failed(self, f"invalid response: {exc}")
            return
        self._flush()
        if self.finish_after_feed:  # a HEAD response: llhttp would wait for a body
            self.parser = httptools.HttpResponseParser(self)
            self._finish()

    def eof_received(self) -> bool | None:
        if self.tunnel and self.client is not None:
            self.client.tunnel_eof(from_client=False)
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.discard(self)
        client = self.client
        if client is None:
            return
        if self.tunnel:
            client.tunnel_lost()
        elif self.out is None:
            client.upstream_failed(self, describe_error(exc))
        elif self.upstream_framing == Framing.CLOSE and self.out != Framing.NONE:
            self.keep = False
            self._finish()  # a close-delimited body ends here
        else:
            self.client = None
            client.abort()  # the response was cut short; the client must see it too

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_for_upstream()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_for_upstream()

    # --- httptools callbacks ----------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.out is not None:
            return  # trailers: dropped (the body is re-framed)
        lname = name.lower()
        kind = self.kinds.get(lname)
        if kind is None:
            self._lines.append(name + b": " + value + b"\r\n")
        elif kind == _CONTENT_LENGTH:
            self.upstream_framing = Framing.LENGTH
            self._lines.append(name + b": " + value + b"\r\n")
        elif kind == _TRANSFER_ENCODING:
            self.upstream_framing = Framing.CHUNKED
        elif kind == _DATE:
            self._has_date = True
            self._lines.append(name + b": " + value + b"\r\n")
        elif kind == _HOP_CONNECTION:
            tokens = connection_tokens(value)
            self._conn_tokens = tokens if self._conn_tokens is None else self._conn_tokens | tokens
        elif kind == _HOP_UPGRADE:
            self._upgrade_value = value

    def on_headers_complete(self) -> None:
        client, req = self.client, self.req
        assert client is not None and req is not None
        status = self.parser.get_status_code()
        lines = self._lines
        if self._conn_tokens:
            lines = _drop_named(lines, self._conn_tokens)
        if status < 200 and status != 101:
            self._informational = True
            if not req.http10:
                self._emit(b"".join((status_line(status, self._reason), *lines, b"\r\n")))
            self._lines, self._reason, self._conn_tokens = [], b"", None
            return
        if status == 101:
            if not req.upgrade:
                raise httptools.HttpParserError("101 without an upgrade request")
            head = [status_line(status, self._reason), *lines, b"connection: upgrade\r\n"]
            if self._upgrade_value is not None:
                head.append(b"upgrade: " + self._upgrade_value + b"\r\n")
            head.append(b"\r\n")
            self.out = Framing.NONE
            self.tunnel = True  # llhttp calls on_message_complete before raising the upgrade
            self._emit(b"".join(head))
            return
        body_allowed = not (req.is_head or status == 204 or status == 304)
        framing = self.upstream_framing
        if not body_allowed:
            out = Framing.NONE
        elif framing == Framing.LENGTH:
            out = Framing.LENGTH
        else:
            if framing == Framing.NONE:
                self.upstream_framing = Framing.CLOSE
            out = Framing.CLOSE if req.http10 else Framing.CHUNKED
        self.out = out
        keep_client = client.keep_alive_after(req) and out != Framing.CLOSE
        head = [status_line(status, self._reason), *lines]
        if out == Framing.CHUNKED:
            head.append(b"transfer-encoding: chunked\r\n")
        if not keep_client:
            head.append(b"connection: close\r\n")
            req.keep_alive = False
        elif req.http10:
            head.append(b"connection: keep-alive\r\n")
        if not self._has_date:
            head.append(http_date())
        head.append(b"\r\n")
        self._emit(b"".join(head))
        if req.is_head:
            self.keep = self.parser.should_keep_alive()
            self.finish_after_feed = True

    def on_body(self, body: bytes) -> None:
        if self.finish_after_feed:
            self.keep = False  # bytes after a HEAD response: never reuse this connection
            return
        client = self.client
        if client is None or not body:
            return
        if self.out == Framing.CHUNKED:
            self.wbuf += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.wbuf.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.tunnel or self.finish_after_feed or self.client is None:
            return
        if self.out is None:
            return  # 101 for a request that is not an upgrade: handled as an error
        self.keep = self.keep and self.parser.should_keep_alive()
        self._finish()

    # --- exchange lifecycle -------------------------------------------------------------------

    def begin(self, client: ClientConnection, req: Request) -> None:
        """Start an exchange for ``client`` (which then sends the request head and body)."""
        self.client, self.req = client, req
        self.sink = client.transport
        self._reset()
        if client.write_paused:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _emit(self, data: bytes) -> None:
        self.wbuf.append(data)

    def _flush(self) -> None:
        """Write what this batch of upstream bytes produced with one call: one syscall."""
        buf = self.wbuf
        if buf:
            self.wbuf = []
            if len(buf) == 1:
                self.sink.write(buf[0])
            else:
                self.sink.writelines(buf)

    def _finish(self) -> None:
        client, req = self.client, self.req
        self.client = self.req = None
        if client is None or req is None:
            return
        if self.out == Framing.CHUNKED:
            self.wbuf.append(LAST_CHUNK)
        self._flush()
        reusable = self.keep and req.request_done and not self.lost
        client.response_finished(self, reusable)

    def _switch_to_tunnel(self, rest: bytes) -> None:
        client = self.client
        if client is None or not self.tunnel:
            self.transport.abort()  # type: ignore[union-attr]
            return
        self._flush()
        if rest:
            client.transport.write(rest)
        client.tunnel_established(self)


def _drop_named(lines: list[bytes], names: set[bytes]) -> list[bytes]:
    """Remove the header lines whose names a ``Connection`` header listed (RFC 9110 s.7.6.1)."""
    return [line for line in lines if line.partition(b":")[0].lower() not in names]


class Pool:
    """Idle keep-alive connections by upstream, newest first.

    Args:
        max_idle: idle connections kept per upstream; more are closed.
        idle_timeout: seconds an idle connection is kept.
        private_headers: routing headers removed from responses too.
    """

    def __init__(
        self,
        max_idle: int = 64,
        idle_timeout: float = 30.0,
        private_headers: frozenset[str] = frozenset(),
    ) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.header_kinds = response_header_kinds(private_headers)
        self.idle: dict[Upstream, list[UpstreamConnection]] = {}

    def acquire(self, key: Upstream) -> UpstreamConnection | None:
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn.lost and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    def release(self, conn: UpstreamConnection, now: float) -> None:
        conns = self.idle.setdefault(conn.key, [])
        if len(conns) >= self.max_idle or conn.transport is None:
            if conn.transport is not None:
                conn.transport.close()
            return
        conn.idle_since = now
        conns.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.idle[conn.key]

    def expire(self, now: float) -> None:
        """Close idle connections older than ``idle_timeout`` (called about once a second)."""
        for conns in list(self.idle.values()):
            while conns and now - conns[0].idle_since > self.idle_timeout:
                conn = conns.pop(0)
                if conn.transport is not None:
                    conn.transport.close()

    def close(self) -> None:
        for conns in list(self.idle.values()):
            for conn in conns:
                if conn.transport is not None:
                    conn.transport.close()
        self.idle.clear()
