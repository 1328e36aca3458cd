"""The concentrator: stock WireGuard clients (phones, laptops) on the node's own WireGuard engine.

A node whose peer.yaml has ``wireguard: {enabled: true, listen_port: 51820, endpoint: ...}``
listens on that UDP port with the project's WireGuard engine (:mod:`tunnelmesh.proto`, driven by
:class:`tunnelmesh.aio.wgsocket.WireGuardSocket`, the driver the UDP transport uses: batched
reads, GSO sends) under the node's own X25519 key, the ``wg_public_key`` every peer already
knows. No kernel module, no wireguard-go.

The engine's peers are exactly the clients this node serves, as the node's
:class:`~tunnelmesh.node.clients.ClientRoutes` computes them from the coordinator's push
(active, not expired, this node as their concentrator), each with its public key and optional
preshared key. Each client has a link in the forwarder under its name: what the client sends
enters the forwarding as from the client's route (its source must be its own mesh IP; the
forwarder relays what is for another peer), and what the mesh or this node sends to the
client's mesh IP leaves on the link. A client that is disabled, removed or expires is removed
from the engine at once: its keys are erased, its packets are dropped as for an unknown index,
and its handshakes are refused (its key is unknown).

No hook is called per packet: the socket hands each read batch to the engine, the engine
groups the packets per client, and each client's batch goes to the forwarder in one call.
"""

from __future__ import annotations

import base64
import binascii
import logging
import socket
from typing import TYPE_CHECKING, Any

import msgspec
from tunnelmesh.aio.wgsocket import WireGuardSocket
from tunnelmesh.errors import TransportError
from tunnelmesh.proto import WireGuard

if TYPE_CHECKING:
    from tunnelmesh.abc import ConcentratorHost
    from tunnelmesh.aio.wgsession import WireGuardLink
    from tunnelmesh.config import PeerConfig
    from tunnelmesh.node.clients import ClientRecord

__all__ = ["Concentrator", "WireGuardSection"]

log = logging.getLogger(__name__)


class WireGuardSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``wireguard:`` section of peer.yaml: this node serves WireGuard clients.

    ``endpoint`` is the ``host:port`` the clients dial (this node's public address or DNS
    name and ``listen_port`` as the internet sees them); it goes into their configuration.
    """

    enabled: bool = False
    listen_port: int = 51820
    endpoint: str = ""
    listen_address: str = "0.0.0.0"

    def __post_init__(self) -> None:
        host, _, port = self.endpoint.rpartition(":")
        if self.enabled and not (host and port.isdigit()):
            raise ValueError("endpoint must be host:port (where the clients reach this node)")
        if not 0 <= self.listen_port < 65536:
            raise ValueError("listen_port must be 0-65535 (0: any free port)")


def _key(text: str) -> bytes | None:
    """32 bytes from base64, or None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


class Concentrator:
    """A UDP listener whose WireGuard engine serves this node's clients.

    Args:
        node: the running node (its key, routing, forwarder and client routes).
        section: the node's ``wireguard`` section.
    """

    def __init__(self, node: ConcentratorHost, section: WireGuardSection) -> None:
        self.node = node
        self.section = section
        self.engine = WireGuard(node.x25519_private_key, mtu=node.config.tun.mtu)
        self.socket: WireGuardSocket | None = None
        self.clients: dict[str, tuple[bytes, bytes]] = {}
        """Served clients by name: (public key, preshared key)."""
        self.client_ids: dict[str, str] = {}
        """Client name -> client ID (the heartbeat reports by ID)."""

    @property
    def endpoint(self) -> str:
        """``host:port`` the clients dial (``wireguard.endpoint``)."""
        return self.section.endpoint

    @property
    def public_key(self) -> bytes:
        """The engine's (the node's) X25519 public key: the clients' ``[Peer] PublicKey``."""
        return self.engine.public_key

    def start(self) -> None:
        """Bind the UDP port, start the engine and follow the node's served clients.

        Raises:
            TransportError: the port cannot be bound.
        """
        address = (self.section.listen_address, self.section.listen_port)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise TransportError(
                f"wireguard: cannot bind {address[0]}:{address[1]}: {exc.strerror}"
            ) from None
        self.socket = WireGuardSocket(
            self.engine, sock, on_link=self._attach, mtu=self.node.config.tun.mtu
        )
        self.socket.start()
        routes = self.node.wg_clients
        if routes is not None:
            routes.subscribe(self.apply)
            self.apply(routes.served)

    @property
    def port(self) -> int:
        """The bound UDP port."""
        if self.socket is None:
            raise TransportError("the concentrator is not listening")
        port: int = self.socket.sock.getsockname()[1]
        return port

    def apply(self, served: dict[str, ClientRecord]) -> None:
        """Make the engine's peers exactly ``served`` (by name; key and preshared key)."""
        if self.socket is None:
            return
        wanted: dict[str, tuple[bytes, bytes]] = {}
        for name, client in served.items():
            key = _key(client.public_key)
            psk = _key(client.preshared_key) if client.preshared_key else bytes(32)
            if key is None or psk is None:
                log.warning("client %s: its key or preshared key is not 32 bytes; not served", name)
                continue
            wanted[name] = (key, psk)
            self.client_ids[name] = client.client_id
        for name, keys in list(self.clients.items()):
            if wanted.get(name) != keys:
                self._drop(name, keys[0])
        for name, (key, psk) in wanted.items():
            if name in self.clients:
                continue
            other = self.engine.peers.get(key)
            if other is not None:  # the same key under another name: one client per key
                log.warning("client %s: its key is client %s's; not served", name, other.name)
                continue
            peer = self.engine.add_peer(key, name=name, preshared_key=psk)
            self.clients[name] = (key, psk)
            self._attach(self.socket.link_for(peer))
        for name in list(self.client_ids):
            if name not in self.clients:
                del self.client_ids[name]
        self.socket.session.after()  # re-arm the timer: removed peers' deadlines are gone

    def _attach(self, link: WireGuardLink) -> None:
        if link.peer in self.clients:
            self.node.attach_link(link)

    def _drop(self, name: str, key: bytes) -> None:
        """Stop serving a client now: keys erased, link gone (its packets are dropped)."""
        del self.clients[name]
        self.engine.remove_peer(key)
        assert self.socket is not None
        link = self.socket.links.pop(key, None)
        if link is not None:
            link._lost()
        self.node.detach_link(name, link)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per served client (by client ID): latest handshake (unix seconds, 0 = never),
        bytes received and sent, the endpoint it was last seen at."""
        out: dict[str, dict[str, Any]] = {}
        wall = self.engine.wall_offset  # loop time -> unix time (set when the socket started)
        for name, (key, _psk) in self.clients.items():
            peer = self.engine.peers.get(key)
            if peer is None:
                continue
            ep = peer.endpoint
            out[self.client_ids.get(name, name)] = {
                "latest_handshake": peer.last_handshake + wall if peer.last_handshake else 0.0,
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "endpoint": f"{ep[0]}:{ep[1]}" if ep else "",
            }
        return out

    def describe(self) -> dict[str, Any]:
        """For ``node.status``: the port, the endpoint, the clients and the engine's drops."""
        return {
            "listen_port": self.port if self.socket is not None else 0,
            "endpoint": self.section.endpoint,
            "public_key": base64.b64encode(self.public_key).decode(),
            "clients": {name: self.status().get(cid, {}) for name, cid in self.client_ids.items()},
            "drops": {k: v for k, v in self.engine.drops.items() if v},
        }

    def close(self) -> None:
        """Stop listening; every client's link ends. Idempotent."""
        if self.socket is not None:
            for name in list(self.clients):
                self.node.detach_link(name, None)
            self.socket.close()
            self.socket = None
        self.clients.clear()


def section_of(config: PeerConfig) -> WireGuardSection | None:
    """The enabled ``wireguard`` section of a peer config, or None."""
    section = config.sections.get("wireguard")
    if not isinstance(section, WireGuardSection) or not section.enabled:
        return None
    return section
