"""The resolver's asyncio driver: UDP and TCP on one address, forwarding to upstreams.

::

    backend = CoordinatorBackend()
    server = DnsServer(MeshResolver(backend), listen="127.0.0.53:5353", upstreams=None)
    await server.start()           # upstreams=None: read from /etc/resolv.conf
    ...                            # the control plane calls backend.apply_push(message)
    await server.aclose()

Forwarding: each forwarded UDP query goes out from a fresh socket (a new random source port,
RFC 5452), to the upstreams in order, ``upstream_timeout`` seconds each; the first reply with
the query's ID wins. A TCP query is forwarded over TCP. When every upstream fails the client
gets SERVFAIL. At most ``max_pending`` forwards run at once; beyond that queries are dropped
(counted in ``stats["dropped"]``). The server never stops serving because of a bad message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import struct
from collections.abc import Sequence

from tunnelmesh.dns.resolver import Action, MeshResolver
from tunnelmesh.errors import DnsError

__all__ = ["DnsServer", "parse_address", "read_resolv_conf"]

log = logging.getLogger(__name__)

TCP_IDLE = 10.0
MAX_TCP_CLIENTS = 128


def parse_address(text: str, default_port: int = 53) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``::1``, ``[::1]:53`` -> (host, port).

    Raises:
        ValueError: not an IP address with an optional port.
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host.split("%", 1)[0])
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def read_resolv_conf(path: str | os.PathLike[str] = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The ``nameserver`` entries of a resolv.conf file (missing file: none)."""
    servers: list[tuple[str, int]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    with contextlib.suppress(ValueError):
                        servers.append(parse_address(fields[1]))
    except FileNotFoundError:
        pass
    return servers


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, qid: bytes, done: asyncio.Future[bytes]) -> None:
        self.qid = qid
        self.done = done

    def datagram_received(self, data: bytes, addr: object) -> None:
        # Only a response to our ID; anything else is ignored (and the wait goes on).
        if len(data) >= 12 and data[:2] == self.qid and data[2] & 0x80 and not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        server = self.server
        result = server.resolver.handle(data)
        if result.action is Action.ANSWER:
            assert self.transport is not None
            self.transport.sendto(result.data, addr)
        elif result.action is Action.FORWARD:
            server._spawn(server._forward_udp(data, addr))

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("dns udp: %s", exc)


class DnsServer:
    """Serve a :class:`MeshResolver` on UDP and TCP; see the module docstring.

    Args:
        resolver: the sans-IO resolver.
        listen: ``host:port`` (port 0 picks one; see :attr:`address`).
        upstreams: ``host[:port]`` resolvers for other names; None reads ``resolv_conf``.
        resolv_conf: where to read upstreams from when ``upstreams`` is None.
        upstream_timeout: seconds to wait for each upstream.
        tcp: also serve TCP (same port).
        max_pending: forwards in flight at most.
    """

    def __init__(
        self,
        resolver: MeshResolver,
        *,
        listen: str = "127.0.0.53:5353",
        upstreams: Sequence[str] | None = None,
        resolv_conf: str | os.PathLike[str] = "/etc/resolv.conf",
        upstream_timeout: float = 2.0,
        tcp: bool = True,
        max_pending: int = 1024,
    ) -> None:
        self.resolver = resolver
        self.listen = parse_address(listen)
        if upstreams is None:
            found = read_resolv_conf(resolv_conf)
        else:
            found = [parse_address(u) for u in upstreams]
        # Never forward to ourselves (e.g. resolv.conf already pointing at this resolver).
        self.upstreams = [u for u in found if u != self.listen]
        self.upstream_timeout = upstream_timeout
        self.tcp = tcp
        self.max_pending = max_pending
        self.stats = resolver.stats
        self.stats.setdefault("servfail", 0)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = self.listen

    async def start(self) -> None:
        """Bind UDP (and TCP on the same port).

        Raises:
            DnsError: the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        host, port = self.listen
        # With port 0 the UDP port is picked first; TCP may find it taken: pick again.
        for attempt in range(1 if port else 20):
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(host, port)
                )
                self._udp = transport
                self.address = transport.get_extra_info("sockname")[:2]
                if self.tcp:
                    self._tcp = await asyncio.start_server(
                        self._serve_tcp, host, self.address[1], reuse_address=True
                    )
                break
            except OSError as exc:
                await self.aclose()
                if port == 0 and exc.errno == errno.EADDRINUSE and attempt < 19:
                    continue
                raise DnsError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        log.info(
            "dns resolver on %s:%d, upstreams %s",
            *self.address,
            ", ".join(f"{h}:{p}" for h, p in self.upstreams) or "none",
        )

    async def aclose(self) -> None:
        """Stop serving and cancel forwards in flight. Idempotent."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _spawn(self, coro: object) -> None:
        if len(self._tasks) >= self.max_pending:
            self.stats["dropped"] += 1
            coro.close()  # type: ignore[attr-defined]
            return
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- forwarding ------------------------------------------------------------------------

    async def _ask_udp(self, query: bytes, upstream: tuple[str, int]) -> bytes:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _OneShot(query[:2], done), remote_addr=upstream
        )
        try:
            transport.sendto(query)
            return await asyncio.wait_for(done, self.upstream_timeout)
        finally:
            transport.close()

    async def _ask_tcp(self, query: bytes, upstream: tuple[str, int]) -> bytes:
        async def ask() -> bytes:
            reader, writer = await asyncio.open_connection(*upstream)
            try:
                writer.write(struct.pack("!H", len(query)) + query)
                (n,) = struct.unpack("!H", await reader.readexactly(2))
                reply = await reader.readexactly(n)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if len(reply) < 12 or reply[:2] != query[:2]:
                raise DnsError("upstream answered another query")
            return reply

        return await asyncio.wait_for(ask(), self.upstream_timeout)

    async def forward(self, query: bytes, *, tcp: bool = False) -> bytes:
        """Ask the upstreams in order; SERVFAIL when none answers."""
        for upstream in self.upstreams:
            try:
                if tcp:
                    return await self._ask_tcp(query, upstream)
                return await self._ask_udp(query, upstream)
            except (OSError, TimeoutError, DnsError, asyncio.IncompleteReadError) as exc:
                log.debug("upstream %s:%d failed: %r", *upstream, exc)
        self.stats["servfail"] += 1
        return self.resolver.servfail(query)

    async def _forward_udp(self, query: bytes, addr: tuple[str, int]) -> None:
        reply = await self.forward(query)
        if self._udp is not None:
            self._udp.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._tasks) >= self.max_pending + MAX_TCP_CLIENTS:
            writer.close()
            return
        self._tasks.add(task)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                (n,) = struct.unpack("!H", head)
                if n > self.resolver.max_size:
                    self.stats["dropped"] += 1
                    return
                query = await asyncio.wait_for(reader.readexactly(n), TCP_IDLE)
                result = self.resolver.handle(query)
                if result.action is Action.DROP:
                    return
                reply = result.data
                if result.action is Action.FORWARD:
                    reply = await self.forward(query, tcp=True)
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
