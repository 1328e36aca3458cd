"""The UDP transport: every link is a WireGuard peer over one UDP socket.

The wire format is WireGuard's, byte for byte (:mod:`tunnelmesh.proto.wireguard`), so a
tunnelmesh node and a stock WireGuard peer (wireguard-go, the Linux module) talk to each other.
The static X25519 key comes from the node's ed25519 identity
(:func:`tunnelmesh.proto.wgcrypto.x25519_private_from_ed25519_seed`), peers' keys from their
ed25519 public keys, or X25519 keys directly for interop with plain WireGuard.

Endpoints come from the coordinator (a peer's local and STUN-reflexive addresses); an
authenticated packet from a new address moves the peer's endpoint there (roaming), as WireGuard
does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence

from tunnelmesh.abc import Link, Transport, TransportCapabilities
from tunnelmesh.aio.wgdriver import WireGuardLink, WireGuardSocket, parse_endpoint
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
    """

    name = "udp"
    capabilities = TransportCapabilities(
        incoming=True, nat_punch=True, reliable=False, ordered=False, max_mtu=1420
    )

    def __init__(
        self,
        private_key: bytes,
        *,
        listen: str = "0.0.0.0:2223",
        mtu: int = 1420,
        gso: bool = True,
        gro: bool = True,
    ) -> None:
        self.engine = WireGuard(private_key, mtu=mtu)
        self.listen_address = listen
        self.mtu = mtu
        self._gso, self._gro = gso, gro
        self._socket: WireGuardSocket | None = None
        self._on_link: Callable[[Link], None] | None = None
        self._waiters: dict[bytes, asyncio.Future[None]] = {}
        self.handshakes = 0
        """Handshakes completed so far (either side initiating)."""

    @property
    def public_key(self) -> bytes:
        """Our static X25519 public key."""
        return self.engine.public_key

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
        self.engine.add_peer(x, name=peer, endpoint=endpoint)

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
            wg_peer.last_sent_handshake = None
            self.engine.initiate(wg_peer, loop.time())
            self._socket._after()
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

    async def aclose(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
