"""``example_tcp``: WireGuard messages in length-prefixed frames over plain TCP.

This is how a third party adds a transport to tunnelmesh with its public API only:

* the transport implements :class:`tunnelmesh.abc.Transport`; its links are the session's
  :class:`~tunnelmesh.aio.wgsession.WireGuardLink` (a :class:`tunnelmesh.abc.Link`);
* packets are sealed end to end by tunnelmesh's sans-IO WireGuard engine,
  :class:`tunnelmesh.proto.WireGuard`, so TCP carries ciphertext only, and peers are
  authenticated by their keys (a peer's X25519 key is derived from its ed25519 identity with
  :func:`tunnelmesh.identity.x25519_public_of`);
* the engine's driver (links, events, one timer, sending and receiving in batches) is
  :class:`tunnelmesh.aio.wgsession.WireGuardSession`, as for tunnelmesh's own UDP and relay
  transports: this module gives it a ``transmit(messages, connection)`` callable and hands it
  the messages each TCP connection brings;
* it passes :mod:`tunnelmesh.testing.conformance` (see ``tests/``).

Each TCP connection carries frames ``[u16 big-endian length][WireGuard message]``. The engine
addresses a peer by an opaque endpoint, here the connection object: a handshake from a peer on
a new connection moves the peer there (WireGuard roaming), so whichever side dialled last is
the path used in both directions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import ClassVar

from tunnelmesh.abc import Link, Transport, TransportCapabilities, TransportHost
from tunnelmesh.aio.wgsession import WireGuardSession
from tunnelmesh.errors import TransportError
from tunnelmesh.identity import x25519_public_of
from tunnelmesh.proto import HandshakeCompleted, WireGuard

__all__ = ["TcpTransport"]

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
        self.session = WireGuardSession(
            self.engine,
            _transmit,
            mtu=mtu,
            on_link=self._incoming,
            on_event=self._event,
            announce_dialled=False,  # a dial returns its link; only a peer's dial is announced
            link_kind="tcp link",
        )
        self._on_link: Callable[[Link], None] | None = None
        self._waiters: dict[bytes, asyncio.Future[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

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
        self.session.start(loop)
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
            return self.session.link_for(wg_peer)  # the session and its connection are up
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
            self.session.initiate(wg_peer)
            try:
                await asyncio.wait_for(fut, self.handshake_timeout)
            except TimeoutError:
                if conn.transport is not None:
                    conn.transport.close()
                continue
            finally:
                self._waiters.pop(wg_peer.public_key, None)
            return self.session.link_for(wg_peer)
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
        for link in list(self.session.links.values()):
            await link.aclose()
        self.session.close()

    # --- what the session needs from this carrier ---------------------------------------------

    def _received(self, conn: _Conn, records: list[bytes]) -> None:
        self.session.receive(records, conn)

    def _incoming(self, link: Link) -> None:
        if self._on_link is not None:
            self._on_link(link)

    def _event(self, event: object) -> None:
        if isinstance(event, HandshakeCompleted):
            fut = self._waiters.get(event.public_key)
            if fut is not None and not fut.done():
                fut.set_result(None)


def _transmit(messages: list[bytes], conn: object) -> None:
    """The session's transmit: WireGuard messages to the peer's connection (its endpoint)."""
    if isinstance(conn, _Conn):
        conn.write(messages)
