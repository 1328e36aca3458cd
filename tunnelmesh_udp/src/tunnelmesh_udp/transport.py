"""The UDP transport: every link is a WireGuard peer over one UDP socket.

The wire format is WireGuard's, byte for byte (:mod:`tunnelmesh.proto.wireguard`), so a
tunnelmesh node and a stock WireGuard peer (wireguard-go, the Linux module) talk to each other.
The static X25519 key comes from the node's ed25519 identity
(:func:`tunnelmesh.proto.wgcrypto.x25519_private_from_ed25519_seed`), peers' keys from their
ed25519 public keys, or X25519 keys directly for interop with plain WireGuard.

Endpoints come from the coordinator (a peer's local and STUN-reflexive addresses); an
authenticated packet from a new address moves the peer's endpoint there (roaming), as WireGuard
does. ``keepalive`` (25 s for a mesh node) sends WireGuard persistent keepalives to every peer,
so the NAT mappings of an idle path stay open. :meth:`UdpTransport.stun` asks a STUN server for
the reflexive address *from the transport's own socket* (the mapping peers must use), also
after the node moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any

from tunnelmesh import stun as stun_codec
from tunnelmesh.abc import Link, Transport, TransportCapabilities, TransportHost
from tunnelmesh.aio.wgsession import WireGuardLink, traffic_of
from tunnelmesh.aio.wgsocket import WireGuardSocket, parse_endpoint
from tunnelmesh.errors import TransportError
from tunnelmesh.proto import WireGuard
from tunnelmesh.proto.wgcrypto import x25519_public_from_ed25519
from tunnelmesh.proto.wgmessages import REKEY_TIMEOUT

__all__ = ["UdpTransport"]


class UdpTransport(Transport):
    """WireGuard over UDP.

    Args:
        private_key: our static X25519 private key (32 bytes).
        listen: ``host:port`` to bind (port 0 picks one).
        mtu: the tunnel MTU (1420 keeps datagrams within a 1500-byte path).
        gso / gro: UDP segmentation / receive offload when available.
        keepalive: seconds between persistent keepalives to every peer (0: off, as in plain
            WireGuard); holds NAT mappings open on idle paths.
    """

    name = "udp"
    capabilities = TransportCapabilities(
        incoming=True, nat_punch=True, reliable=False, ordered=False, max_mtu=1420
    )
    preference = 10  # first by default: direct, and WireGuard on the wire

    def __init__(
        self,
        private_key: bytes,
        *,
        listen: str = "0.0.0.0:2223",
        mtu: int = 1420,
        gso: bool = True,
        gro: bool = True,
        keepalive: float = 0.0,
    ) -> None:
        self.engine = WireGuard(private_key, mtu=mtu)
        self.keepalive = keepalive
        self.listen_address = listen
        self.mtu = mtu
        self._gso, self._gro = gso, gro
        self._socket: WireGuardSocket | None = None
        self._on_link: Callable[[Link], None] | None = None
        self._waiters: dict[bytes, asyncio.Future[None]] = {}
        self.handshakes = 0
        """Handshakes completed so far (either side initiating)."""

    @classmethod
    def from_node(cls, node: TransportHost) -> UdpTransport:
        """Build from a running node: its key, ``0.0.0.0:<transports.listen_port>``, MTU, 25 s keepalives."""
        return cls(
            node.x25519_private_key,
            listen=node.listen_address,
            mtu=node.config.tun.mtu,
            keepalive=25.0,
        )

    @property
    def public_key(self) -> bytes:
        """Our static X25519 public key."""
        return self.engine.public_key

    def traffic(self) -> dict[str, tuple[int, int]]:
        """Transport bytes per peer, from the WireGuard engine (closed links included)."""
        return traffic_of(self.engine)

    @property
    def local_address(self) -> tuple[str, int]:
        """The bound socket address (after :meth:`listen`)."""
        if self._socket is None:
            raise TransportError("udp transport is not listening")
        addr: tuple[str, int] = self._socket.sock.getsockname()[:2]
        return addr

    async def listen(self, on_link: Callable[[Link], None]) -> None:
        if self._socket is not None:
            return
        host, port = parse_endpoint(self.listen_address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise TransportError(f"udp: cannot bind {self.listen_address}: {exc}") from exc
        self._on_link = on_link
        self._socket = WireGuardSocket(
            self.engine,
            sock,
            on_link=self._incoming,
            on_event=self._event,
            gso=self._gso,
            gro=self._gro,
            mtu=self.mtu,
        )
        self._socket.start()

    def _incoming(self, link: WireGuardLink) -> None:
        if self._on_link is not None:
            self._on_link(link)

    def _event(self, event: object) -> None:
        if type(event).__name__ == "HandshakeCompleted":
            self.handshakes += 1
        key = getattr(event, "public_key", None)
        fut = self._waiters.get(key) if key is not None else None
        if fut is not None and not fut.done() and type(event).__name__ == "HandshakeCompleted":
            fut.set_result(None)

    def add_wireguard_peer(
        self,
        name: str,
        x25519_public_key: bytes,
        endpoint: str | None = None,
        *,
        persistent_keepalive: float = 0.0,
    ) -> WireGuardLink:
        """Configure a peer by its X25519 key (like ``wg set ... peer``); returns its link.

        The link is usable at once: packets sent before the handshake completes are staged.
        """
        if self._socket is None:
            raise TransportError("udp transport is not listening")
        peer = self.engine.add_peer(
            x25519_public_key,
            name=name,
            endpoint=parse_endpoint(endpoint) if endpoint else None,
            persistent_keepalive=persistent_keepalive,
        )
        return self._socket.link_for(peer)

    def update_peer(
        self, peer: str, *, public_key: bytes = b"", endpoints: Sequence[str] = ()
    ) -> None:
        existing = self.engine.peer_by_name(peer)
        if not public_key:
            if existing is not None:
                self.engine.remove_peer(existing.public_key)
            return
        x = x25519_public_from_ed25519(public_key)
        endpoint = parse_endpoint(endpoints[0]) if endpoints else None
        if existing is not None and existing.public_key != x:
            self.engine.remove_peer(existing.public_key)
        self.engine.add_peer(x, name=peer, endpoint=endpoint, persistent_keepalive=self.keepalive)

    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        """Handshake with ``peer``, trying each endpoint for one REKEY_TIMEOUT (5 s).

        Raises:
            TransportError: not listening, no key for the peer, or no endpoint answered.
        """
        if self._socket is None:
            raise TransportError("udp transport is not listening")
        if public_key:
            self.update_peer(peer, public_key=public_key, endpoints=endpoints)
        wg_peer = self.engine.peer_by_name(peer)
        if wg_peer is None:
            raise TransportError(f"udp: no public key known for peer {peer!r}")
        loop = asyncio.get_running_loop()
        candidates: list[str | None] = [*endpoints] or [None]
        for endpoint in candidates:
            if self.engine.has_session(wg_peer, loop.time()):
                break
            if endpoint is not None:
                wg_peer.endpoint = parse_endpoint(endpoint)
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters[wg_peer.public_key] = fut
            self._socket.session.initiate(wg_peer)
            try:
                await asyncio.wait_for(fut, REKEY_TIMEOUT)
                break
            except TimeoutError:
                continue
            finally:
                self._waiters.pop(wg_peer.public_key, None)
        else:
            raise TransportError(f"udp: no answer from {peer} at {list(endpoints)}")
        return self._socket.link_for(wg_peer)

    async def stun(
        self, host: str, port: int, *, timeout: float = 1.0, attempts: int = 3
    ) -> tuple[str, int] | None:
        """The reflexive address of this transport's socket as a STUN server sees it.

        The request leaves from the transport's own (bound) socket; while it is outstanding the
        engine's receive function is wrapped to take the STUN answer out (WireGuard messages
        never look like STUN: their second byte is zero), so the data path pays nothing
        otherwise. Returns None when nothing answered.
        """
        if self._socket is None:
            raise TransportError("udp transport is not listening")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[str, int]] = loop.create_future()
        request, tid = stun_codec.binding_request(software="tunnelmesh")
        engine = self.engine
        original = engine.receive_datagram

        def receive(data: bytes, addr: Any, now: float) -> Any:
            if len(data) >= 20 and data[1] != 0 and stun_codec.is_stun(data):
                with contextlib.suppress(stun_codec.StunParseError):
                    msg = stun_codec.parse(data)
                    mapped = stun_codec.mapped_address(msg)
                    if msg.transaction_id == tid and mapped and not answer.done():
                        answer.set_result((str(mapped[0]), int(mapped[1])))
                return None
            return original(data, addr, now)

        engine.receive_datagram = receive  # type: ignore[method-assign]
        try:
            for _ in range(attempts):
                self._socket._sendto(request, (host, port))
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(answer), timeout)
            return None
        finally:
            del engine.receive_datagram  # back to the class's method

    async def aclose(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
