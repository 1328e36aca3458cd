"""``example_tcp``: WireGuard messages in length-prefixed frames over plain TCP.

This is how a third party adds a transport to tunnelmesh with its public API only:

* the transport implements :class:`tunnelmesh.abc.Transport` and its links
  :class:`tunnelmesh.abc.Link`;
* packets are sealed end to end by tunnelmesh's sans-IO WireGuard engine,
  :class:`tunnelmesh.proto.WireGuard`, so TCP carries ciphertext only, and peers are
  authenticated by their keys (a peer's X25519 key is derived from its ed25519 identity with
  :func:`tunnelmesh.identity.x25519_public_of`);
* this module is the engine's *driver*: it moves bytes between TCP connections and the engine,
  drains the engine's outgoing messages and events, and re-arms one timer;
* it passes :mod:`tunnelmesh.testing.conformance` (see ``tests/``).

Each TCP connection carries frames ``[u16 big-endian length][WireGuard message]``. The engine
addresses a peer by an opaque endpoint, here the connection object: a handshake from a peer on
a new connection moves the peer there (WireGuard roaming), so whichever side dialled last is
the path used in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from tunnelmesh.abc import Link, Transport, TransportCapabilities, TransportHost
from tunnelmesh.errors import TransportError
from tunnelmesh.identity import x25519_public_of
from tunnelmesh.proto import HandshakeCompleted, Peer, WireGuard

__all__ = ["TcpLink", "TcpTransport"]

HANDSHAKE_WAIT = 11.0  # two WireGuard handshake attempts (REKEY_TIMEOUT is 5 s)


class _Conn(asyncio.Protocol):
    """One TCP connection: frames in, frames out."""

    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.owner._conns.add(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        records = []
        off, end = 0, len(buf)
        while end - off >= 2:
            n = (buf[off] << 8) | buf[off + 1]
            if end - off - 2 < n:
                break
            records.append(bytes(buf[off + 2 : off + 2 + n]))
            off += 2 + n
        del buf[:off]
        if records:
            self.owner._received(self, records)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.owner._conns.discard(self)

    def write(self, records: list[bytes]) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(b"".join(len(r).to_bytes(2, "big") + r for r in records))
        return True


class TcpLink(Link):
    """A link to one peer (one WireGuard peer of the transport's engine)."""

    def __init__(self, owner: TcpTransport, peer: Peer, mtu: int) -> None:
        self._owner = owner
        self.wg_peer = peer
        self.peer = peer.name
        self.mtu = mtu
        self.closed = False
        self._deliver: Callable[[Link, list[bytes]], None] | None = None
        self._queue: asyncio.Queue[list[bytes]] = asyncio.Queue(256)

    def send_batch(self, datagrams: Sequence[bytes | bytearray | memoryview]) -> None:
        if self.closed:
            raise TransportError(f"tcp link to {self.peer} is closed")
        self._owner._send(self.wg_peer, datagrams)

    def set_receiver(self, deliver: Callable[[Link, list[bytes]], None] | None) -> None:
        self._deliver = deliver
        while deliver is not None and not self._queue.empty():
            packets = self._queue.get_nowait()
            if packets:
                deliver(self, packets)

    def _received(self, packets: list[bytes]) -> None:
        if self._deliver is not None:
            self._deliver(self, packets)
        else:
            with contextlib.suppress(asyncio.QueueFull):  # a full queue drops
                self._queue.put_nowait(packets)

    async def recv_batch(self) -> list[bytes]:
        if self.closed:
            raise TransportError(f"tcp link to {self.peer} is closed")
        packets = await self._queue.get()
        if not packets:
            self._queue.put_nowait([])  # wake the next waiter too
            raise TransportError(f"tcp link to {self.peer} is closed")
        return packets

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._owner._links.pop(self.wg_peer.public_key, None)
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait([])


class TcpTransport(Transport):
    """WireGuard over TCP.

    Args:
        private_key: our static X25519 private key.
        listen: ``host:port`` to accept TCP connections on (port 0 picks one).
        mtu: the tunnel MTU.
        port_offset: added to the port of every endpoint dialled, and to the listen port by
            :meth:`from_node`, so this transport can share the published UDP endpoints.
        handshake_timeout: how long :meth:`dial` waits for the handshake per endpoint.
    """

    name: ClassVar[str] = "example_tcp"
    capabilities: ClassVar[TransportCapabilities] = TransportCapabilities(
        incoming=True, nat_punch=False, reliable=False, ordered=False, max_mtu=1420
    )

    def __init__(
        self,
        private_key: bytes,
        *,
        listen: str = "0.0.0.0:0",
        mtu: int = 1420,
        port_offset: int = 0,
        handshake_timeout: float = HANDSHAKE_WAIT,
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.engine = WireGuard(private_key, mtu=mtu)
        self.listen_address = listen
        self.mtu = mtu
        self.port_offset = port_offset
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._links: dict[bytes, TcpLink] = {}
        self._on_link: Callable[[Link], None] | None = None
        self._waiters: dict[bytes, asyncio.Future[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def from_node(cls, node: TransportHost) -> TcpTransport:
        """How a tunnelmesh node builds it: its key, TCP on the UDP port number plus one."""
        host, _, port = node.listen_address.rpartition(":")
        return cls(node.x25519_private_key, listen=f"{host}:{int(port) + 1}", port_offset=1)

    @property
    def local_address(self) -> tuple[str, int]:
        if self._server is None:
            raise TransportError("example_tcp is not listening")
        addr: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        return addr

    def update_peer(
        self, peer: str, *, public_key: bytes = b"", endpoints: Sequence[str] = ()
    ) -> None:
        existing = self.engine.peer_by_name(peer)
        x = x25519_public_of(public_key) if public_key else None
        if existing is not None and existing.public_key != x:
            self.engine.remove_peer(existing.public_key)
        if x is not None:
            self.engine.add_peer(x, name=peer)

    async def listen(self, on_link: Callable[[Link], None]) -> None:
        self._on_link = on_link
        if self._server is not None:
            return
        self._loop = loop = asyncio.get_running_loop()
        self.engine.wall_offset = time.time() - loop.time()
        host, _, port = self.listen_address.rpartition(":")
        try:
            self._server = await loop.create_server(lambda: _Conn(self), host, int(port))
        except OSError as exc:
            raise TransportError(f"example_tcp: cannot listen on {self.listen_address}") from exc

    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        if self._loop is None:
            raise TransportError("example_tcp is not listening")
        if public_key:
            self.update_peer(peer, public_key=public_key)
        wg_peer = self.engine.peer_by_name(peer)
        if wg_peer is None:
            raise TransportError(f"example_tcp: no key for {peer!r}")
        loop = self._loop
        conn = wg_peer.endpoint
        if (
            isinstance(conn, _Conn)
            and conn.transport is not None
            and self.engine.has_session(wg_peer, loop.time())
        ):
            return self._link_for(wg_peer)  # the session and its connection are still up
        for endpoint in endpoints:
            host, _, port = endpoint.rpartition(":")
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Conn(self), host.strip("[]"), int(port) + self.port_offset
                    ),
                    5.0,
                )
            except (OSError, TimeoutError, ValueError):
                continue
            wg_peer.endpoint = conn
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters[wg_peer.public_key] = fut
            wg_peer.last_sent_handshake = None
            self.engine.initiate(wg_peer, loop.time())
            self._after()
            try:
                await asyncio.wait_for(fut, self.handshake_timeout)
            except TimeoutError:
                if conn.transport is not None:
                    conn.transport.close()
                continue
            finally:
                self._waiters.pop(wg_peer.public_key, None)
            return self._link_for(wg_peer)
        raise TransportError(f"example_tcp: no handshake with {peer} at {list(endpoints)}")

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.close()
        if server is not None:
            await server.wait_closed()
        for link in list(self._links.values()):
            await link.aclose()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- the engine driver ------------------------------------------------------------------

    def _link_for(self, peer: Peer) -> TcpLink:
        link = self._links.get(peer.public_key)
        if link is None:
            link = self._links[peer.public_key] = TcpLink(self, peer, self.mtu)
        return link

    def _send(self, peer: Peer, packets: Sequence[bytes | bytearray | memoryview]) -> None:
        assert self._loop is not None
        messages = self.engine.encrypt_batch(peer, packets, self._loop.time())
        if messages and isinstance(peer.endpoint, _Conn):
            peer.endpoint.write(messages)
        self._after()

    def _received(self, conn: _Conn, records: list[bytes]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        arrived: dict[Peer, list[bytes]] = {}
        for record in records:
            result = self.engine.receive_datagram(record, conn, now)
            if result is not None:
                arrived.setdefault(result[0], []).append(result[1])
        for peer, packets in arrived.items():
            self._incoming(peer)._received(packets)
        self._after()

    def _incoming(self, peer: Peer) -> TcpLink:
        link = self._links.get(peer.public_key)
        if link is None:
            link = self._link_for(peer)
            if self._on_link is not None:
                self._on_link(link)
        return link

    def _after(self) -> None:
        """Send what the engine queued, handle its events, re-arm the timer."""
        by_conn: dict[_Conn, list[bytes]] = {}
        for data, addr in self.engine.datagrams_to_send():
            if isinstance(addr, _Conn):
                by_conn.setdefault(addr, []).append(data)
        for conn, records in by_conn.items():
            conn.write(records)
        while (event := self.engine.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                fut = self._waiters.get(event.public_key)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                peer = self.engine.peers.get(event.public_key)
                if peer is not None and not event.initiator:
                    self._incoming(peer)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.engine.get_timer()
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        self.engine.handle_timer(self._loop.time())
        self._after()
