"""Keeping the data plane in step with the coordinator's peer list.

:class:`PeerSync` takes the control plane's change events
(:mod:`tunnelmesh.control.peertable`) and turns them into data-plane updates:

* :class:`~tunnelmesh.control.peertable.PeerAdded` / ``PeerChanged``: the peer's mesh IP goes
  into the :class:`~tunnelmesh.mesh.routing.RoutingTable` (``set_peer``), every transport
  learns its key and endpoints (``Transport.update_peer``), the DNS backend its name, and a
  link is dialled in the background when there is none yet;
* ``PeerRemoved``: routes, transport state, link and name go;
* ``RendezvousRequested``: the other side cannot reach us, so dial towards it now (its packets
  open our NAT for its answers);
* a rename (``PeerChanged`` with another name) is a removal plus an addition.

Dialling: the peer's endpoints are tried in :func:`~tunnelmesh.node.endpoints.order_endpoints`
order with each transport in the configured order. When all fail, the coordinator is asked for
a rendezvous (the peer dials us) and the dial is retried with exponential backoff (1 s to 30 s)
for as long as the peer exists and has no link. When both ends learn of each other at once,
only one should start: crossing handshake initiations overwrite each other's state and both
sides then wait a whole retransmit timeout (5 s), as with any WireGuard. So the end with the
larger key waits ``passive_delay`` (1.5 s) before its first attempt and does not dial at all
when the other end's link arrived meanwhile. A link that arrives from the other side (a
transport's ``listen`` callback) ends the dialling. Once a peer has a link, the transport keeps
the session alive by itself (WireGuard re-handshakes on demand), also while the coordinator is
away: nothing here depends on the coordinator being reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tunnelmesh.abc import Link, Transport
from tunnelmesh.control.messages import PeerGone, PeerInfo, PeerUpserted
from tunnelmesh.control.peertable import (
    PeerAdded,
    PeerChange,
    PeerChanged,
    PeerRemoved,
    RendezvousRequested,
)
from tunnelmesh.errors import TransportError
from tunnelmesh.identity import parse_public_key
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.node.endpoints import order_endpoints

__all__ = ["PeerSync"]

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0


def raw_public_key(openssh: str) -> bytes:
    """The raw 32 bytes of an ``ssh-ed25519 AAAA...`` public key."""
    from cryptography.hazmat.primitives import serialization

    key = parse_public_key(openssh)
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class PeerSync:
    """Applies peer changes to the routing table, the transports and the DNS backend.

    Args:
        routes: the routing table the forwarder reads.
        transports: the running transports, in order of preference.
        attach: called with each new link (the forwarder's ``attach``).
        exclude: CIDRs never used as underlay endpoints (the mesh CIDR).
        dns: a DNS backend with ``apply_push`` (optional).
        rendezvous: ``async (peer_name) -> None``: ask the coordinator to make ``peer`` dial us.
        notify: called with one human-readable line per link change (progress output).
        local_key: this node's raw public key (for the tie-break above; empty: always dial).
        order: ``(endpoints) -> endpoints`` ordering (default
            :func:`~tunnelmesh.node.endpoints.order_endpoints` with ``exclude``), for tests.
    """

    def __init__(
        self,
        routes: RoutingTable,
        transports: Sequence[Transport],
        attach: Callable[[Link], None],
        *,
        exclude: Sequence[str] = (),
        dns: Any = None,
        rendezvous: Callable[[str], Awaitable[object]] | None = None,
        notify: Callable[[str], None] | None = None,
        local_key: bytes = b"",
        order: Callable[[Sequence[str]], list[str]] | None = None,
    ) -> None:
        self.routes = routes
        self.transports = list(transports)
        self._attach = attach
        self.exclude = list(exclude)
        self.dns = dns
        self._rendezvous = rendezvous
        self._notify = notify
        self._order = order
        self.local_key = local_key
        self.passive_delay = 1.5
        """How long the end with the larger key lets the other dial first (seconds)."""
        self.peers: dict[str, PeerInfo] = {}
        """The peers the data plane knows, by name."""
        self.link_transport: dict[str, str] = {}
        """Which transport carries each peer's link, by peer name."""
        self.dials: dict[str, asyncio.Task[None]] = {}
        self.retry_delay = 1.0
        """The first wait before dialling again (doubles up to 30 s)."""
        self._keys: dict[str, bytes] = {}
        self._closed = False

    # --- events ----------------------------------------------------------------------------

    def apply(self, change: PeerChange) -> None:
        """Apply one change event (call on the event loop; never blocks)."""
        if self._closed:
            return
        if isinstance(change, PeerAdded):
            self._upsert(change.peer, None)
        elif isinstance(change, PeerChanged):
            self._upsert(change.peer, change.previous)
        elif isinstance(change, PeerRemoved):
            self._forget(change.peer.name, change.peer)
        elif isinstance(change, RendezvousRequested):
            peer = self.peers.get(change.from_peer)
            if peer is not None:
                self._dial(peer.name, extra=list(change.endpoints), force=True)

    def _upsert(self, peer: PeerInfo, previous: PeerInfo | None) -> None:
        if previous is not None and previous.name != peer.name:
            self._forget(previous.name, previous)
        old = self.peers.get(peer.name)
        if old is not None and old.peer_id != peer.peer_id:
            self._forget(old.name, old)  # the name now belongs to another key
            old = None
        self.peers[peer.name] = peer
        if self.dns is not None:
            self.dns.apply_push(PeerUpserted(peer=peer, revision=0))
        if not peer.mesh_ip or not peer.public_key:
            return
        try:
            key = self._keys.get(peer.public_key) or raw_public_key(peer.public_key)
        except Exception as exc:  # a malformed key from the coordinator: skip that peer
            log.warning("peer %s has an unusable key: %s", peer.name, exc)
            return
        self._keys[peer.public_key] = key
        changed = (
            old is None
            or old.public_key != peer.public_key
            or old.mesh_ip != peer.mesh_ip
            or old.endpoints != peer.endpoints
            or peer.name not in self.routes.peers
        )
        if not changed:
            return
        self.routes.set_peer(
            peer.name, public_key=key, mesh_ips=[peer.mesh_ip], endpoints=peer.endpoints
        )
        endpoints = self.ordered(peer.endpoints)
        if old is None or old.public_key != peer.public_key or old.endpoints != peer.endpoints:
            for t in self.transports:
                try:
                    t.update_peer(peer.name, public_key=key, endpoints=endpoints)
                except Exception as exc:
                    log.warning("%s: cannot update peer %s: %s", t.name, peer.name, exc)
        self._dial(peer.name)

    def _forget(self, name: str, peer: PeerInfo) -> None:
        self.peers.pop(name, None)
        task = self.dials.pop(name, None)
        if task is not None:
            task.cancel()
        route = self.routes.peers.get(name)
        link = route.link if route is not None else None
        self.routes.remove_peer(name)
        for t in self.transports:
            try:
                t.update_peer(name)
            except Exception as exc:
                log.warning("%s: cannot forget peer %s: %s", t.name, name, exc)
        if link is not None:
            self._spawn(link.aclose())
        if self.link_transport.pop(name, None) is not None:
            self._say(f"link down: {name} (left the mesh)")
        if self.dns is not None:
            self.dns.apply_push(PeerGone(peer_id=peer.peer_id, name=name, revision=0))

    # --- links -----------------------------------------------------------------------------

    def ordered(self, endpoints: Sequence[str]) -> list[str]:
        if self._order is not None:
            return self._order(endpoints)
        return order_endpoints(endpoints, exclude=self.exclude)

    def on_link(self, transport: Transport, link: Link) -> None:
        """A transport opened a link (dialled or incoming): route the peer's packets over it."""
        if self._closed or link.peer not in self.routes.peers:
            return
        route = self.routes.peers[link.peer]
        fresh = route.link is not link
        self._attach(link)
        if fresh:
            self.link_transport[link.peer] = transport.name
            self._say(f"link up: {link.peer} via {transport.name}")

    def _dial(self, name: str, *, extra: Sequence[str] = (), force: bool = False) -> None:
        route = self.routes.peers.get(name)
        if route is None or (route.link is not None and not force):
            return
        running = self.dials.get(name)
        if running is not None and not running.done():
            return
        if not route.endpoints and not extra:
            return  # wait for the peer's first heartbeat to publish some
        self.dials[name] = asyncio.get_running_loop().create_task(
            self._dial_loop(
                name, list(extra), passive=not force and self.local_key > route.public_key
            ),
            name=f"tm-dial-{name}",
        )

    async def _dial_loop(self, name: str, extra: list[str], passive: bool = False) -> None:
        delay = self.retry_delay
        asked = False
        if passive and self.local_key:
            await asyncio.sleep(self.passive_delay)
            route = self.routes.peers.get(name)
            if route is None or route.link is not None:
                return
        while not self._closed:
            route = self.routes.peers.get(name)
            if route is None:
                return
            endpoints = self.ordered([*extra, *route.endpoints])
            for t in self.transports:
                if not endpoints:
                    break
                try:
                    link = await t.dial(name, endpoints, public_key=route.public_key)
                except TransportError as exc:
                    log.debug("%s: %s", t.name, exc)
                    continue
                self.on_link(t, link)
                return
            if route.link is not None and not extra:
                return  # the other side reached us meanwhile
            extra = []
            if self._rendezvous is not None and not asked:
                asked = True
                with contextlib.suppress(Exception):
                    await self._rendezvous(name)
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, MAX_BACKOFF)
            if self.routes.peers.get(name) is not None and self.routes.peers[name].link:
                return

    # --- misc ------------------------------------------------------------------------------

    def _say(self, line: str) -> None:
        if self._notify is not None:
            self._notify(line)
        else:
            log.info("%s", line)

    def _spawn(self, coro: Awaitable[object]) -> None:
        async def run() -> None:
            with contextlib.suppress(Exception):
                await coro

        asyncio.get_running_loop().create_task(run())

    async def aclose(self) -> None:
        """Stop every dial. Idempotent."""
        self._closed = True
        tasks = list(self.dials.values())
        self.dials.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
