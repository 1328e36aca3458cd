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

Paths: each peer gets a :class:`~tunnelmesh.node.paths.PeerPaths`, which runs the sans-IO
:class:`~tunnelmesh.node.negotiate.PathSelector`: transports are dialled in the configured
order (``transports.order``, or ``transports.per_peer[<name>]``; :meth:`PeerSync.set_order`
changes either at run time), the peer's endpoints tried in
:func:`~tunnelmesh.node.endpoints.order_endpoints` order; every open link is probed, and the
routing table follows the selector's choice (fallback, probing back, quality). When dials
fail while the peer has no path, the coordinator is asked for a rendezvous (the peer dials
us; at most once per ``rendezvous_interval``). When both ends learn of each other at once,
only one should start: crossing handshake initiations overwrite each other's state and both
sides then wait a whole retransmit timeout (5 s), as with any WireGuard. So the end with the
larger key waits ``passive_delay`` (1.5 s) before its first attempt; a link that arrives from
the other side meanwhile is used and makes that dial unnecessary. Once a peer has a link, the
transports keep sessions alive by themselves, also while the coordinator is away: nothing
here depends on the coordinator being reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
from tunnelmesh.identity import parse_public_key
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.node.endpoints import order_endpoints
from tunnelmesh.node.negotiate import NegotiationSettings
from tunnelmesh.node.paths import PeerPaths

__all__ = ["PeerSync"]

log = logging.getLogger(__name__)


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
        attach: called with the link that becomes a peer's active path (the node passes a
            function that sets it in the routing table).
        exclude: CIDRs never used as underlay endpoints (the mesh CIDR).
        dns: a DNS backend with ``apply_push`` (optional).
        rendezvous: ``async (peer_name) -> None``: ask the coordinator to make ``peer`` dial us.
        notify: called with one human-readable line per path change (progress output).
        local_key: this node's raw public key (for the tie-break above; empty: always dial).
        order: ``(endpoints) -> endpoints`` ordering (default
            :func:`~tunnelmesh.node.endpoints.order_endpoints` with ``exclude``), for tests.
        deliver: ``(link, packets)``: where packets received on any link go (the forwarder's
            ``deliver``); None drops them (tests).
        probes_in_deliver: ``deliver`` separates path probes itself and passes them to
            :meth:`probes_received` (the forwarder's ``probe_sink``): links then deliver
            straight to it, one pass per batch.
        local_ip: this node's mesh IPv4 address (the source of probes).
        transport_order: the global transport order (default: the order of ``transports``).
        per_peer: transport order per peer name.
        settings: path selection thresholds.
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
        deliver: Callable[[Link, list[bytes]], None] | None = None,
        probes_in_deliver: bool = False,
        local_ip: str = "",
        transport_order: Sequence[str] | None = None,
        per_peer: Mapping[str, Sequence[str]] | None = None,
        settings: NegotiationSettings | None = None,
    ) -> None:
        self.routes = routes
        self.transports = list(transports)
        self._attach = attach
        self.deliver = deliver
        self.probes_in_deliver = probes_in_deliver and deliver is not None
        """``deliver`` takes path probes out itself and hands them to :meth:`probes_received`
        (the forwarder does), so links deliver to it directly."""
        self.local_ip = local_ip
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
        """Which transport carries each peer's packets (its active path), by peer name."""
        self.link_reason: dict[str, str] = {}
        self.on_path_change: Callable[[], None] | None = None
        """Called after a peer's active path changed (the node reports it early)."""
        self.path_changes: dict[str, int] = {}
        """Per peer: how often its active path changed (metrics)."""
        """Why that transport (or why none), by peer name, as of the last switch (the live
        reason is :meth:`reasons`)."""
        self.paths: dict[str, PeerPaths] = {}
        """Path selection per peer."""
        self.settings = settings or NegotiationSettings()
        self.transport_order = list(transport_order or [t.name for t in self.transports])
        self.per_peer = {k: list(v) for k, v in (per_peer or {}).items()}
        self.rendezvous_interval = 30.0
        self._asked: dict[str, float] = {}
        self._keys: dict[str, bytes] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def retry_delay(self) -> float:
        """The first wait before dialling again (doubles up to ``settings.retry_max``)."""
        return self.settings.retry_min

    @retry_delay.setter
    def retry_delay(self, value: float) -> None:
        self.settings.retry_min = value

    @property
    def dials(self) -> dict[str, asyncio.Task[None]]:
        """Running dial tasks, by ``peer/transport``."""
        return {f"{n}/{t}": task for n, p in self.paths.items() for t, task in p.tasks.items()}

    # --- transport order ---------------------------------------------------------------------

    def order_for(self, name: str) -> list[str]:
        """The transports to use for peer ``name``, most preferred first (running ones only)."""
        running = [t.name for t in self.transports]
        wanted = self.per_peer.get(name) or self.transport_order
        return [n for n in wanted if n in running]

    def set_order(self, order: Sequence[str] | None, peer: str | None = None) -> None:
        """Change the transport order globally (``peer`` None) or for one peer.

        Args:
            order: transport names, most preferred first; None or empty removes a peer's own
                order (it follows the global one again).
            peer: a peer name, or None for the global order.

        Raises:
            ValueError: an unknown transport name, or an empty global order.
        """
        names = list(order or [])
        running = {t.name for t in self.transports}
        unknown = [n for n in names if n not in running]
        if unknown:
            raise ValueError(f"unknown transport(s): {', '.join(unknown)}")
        if peer is None:
            if not names:
                raise ValueError("the global transport order cannot be empty")
            self.transport_order = names
        elif names:
            self.per_peer[peer] = names
        else:
            self.per_peer.pop(peer, None)
        for name, paths in self.paths.items():
            if peer is None or name == peer:
                paths.set_order(self.order_for(name))

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
            if peer is not None and peer.name in self.routes.peers:
                self._paths(peer.name).rendezvous(list(change.endpoints))

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
        if peer.endpoints:
            paths = self._paths(peer.name)
            passive = bool(self.local_key) and self.local_key > key
            paths.passive = passive
            paths.start(self.passive_delay if passive else 0.0)

    def _paths(self, name: str) -> PeerPaths:
        paths = self.paths.get(name)
        if paths is None:
            paths = self.paths[name] = PeerPaths(self, name, self.order_for(name), self.settings)
        return paths

    def _forget(self, name: str, peer: PeerInfo) -> None:
        self.peers.pop(name, None)
        paths = self.paths.pop(name, None)
        self.routes.remove_peer(name)
        for t in self.transports:
            try:
                t.update_peer(name)
            except Exception as exc:
                log.warning("%s: cannot forget peer %s: %s", t.name, name, exc)
        if paths is not None:
            self._spawn(paths.aclose())
        self.link_reason.pop(name, None)
        if self.link_transport.pop(name, None) is not None:
            self.say(f"link down: {name} (left the mesh)")
        if self.dns is not None:
            self.dns.apply_push(PeerGone(peer_id=peer.peer_id, name=name, revision=0))

    # --- links -----------------------------------------------------------------------------

    def ordered(self, endpoints: Sequence[str]) -> list[str]:
        if self._order is not None:
            return self._order(endpoints)
        return order_endpoints(endpoints, exclude=self.exclude)

    def on_link(self, transport: Transport, link: Link) -> None:
        """A transport opened a link (dialled or incoming): hand it to the peer's paths."""
        if self._closed or link.peer not in self.routes.peers:
            return
        self._paths(link.peer).link_arrived(transport, link)

    def probes_received(self, link: Link, probes: list[bytes]) -> None:
        """Path probes received on ``link`` (from the forwarder): to that peer's paths."""
        paths = self.paths.get(link.peer)
        if paths is not None and not self._closed:
            paths.probes_received(link, probes)

    def attach_active(self, name: str, link: Link) -> None:
        """``link`` carries peer ``name``'s packets from now on (called by PeerPaths)."""
        if name in self.routes.peers:
            self._attach(link)

    def path_changed(self, name: str, transport: str | None, reason: str) -> None:
        if transport is None:
            self.link_transport.pop(name, None)
        else:
            self.link_transport[name] = transport
        self.link_reason[name] = reason
        self.path_changes[name] = self.path_changes.get(name, 0) + 1
        if self.on_path_change is not None:
            self.on_path_change()

    def ask_rendezvous(self, name: str) -> None:
        """Ask the coordinator to make ``name`` dial us (rate-limited per peer)."""
        if self._rendezvous is None or self._closed:
            return
        now = asyncio.get_running_loop().time()
        last = self._asked.get(name)
        if last is not None and now - last < self.rendezvous_interval:
            return
        self._asked[name] = now
        self._spawn(self._rendezvous(name))

    def network_changed(self) -> None:
        """This node's underlay changed: re-check every peer's paths now."""
        for paths in list(self.paths.values()):
            paths.network_changed()

    def reasons(self) -> dict[str, str]:
        """Why each peer's transport is in use (or why none is), as of now."""
        out = dict(self.link_reason)
        for name, paths in self.paths.items():
            if paths.active is not None:
                out[name] = paths.reason
        return out

    def rtt_ms(self) -> dict[str, float]:
        """The active path's median probe RTT per peer (ms)."""
        out: dict[str, float] = {}
        for name, paths in self.paths.items():
            rtt = paths.rtt_ms()
            if rtt is not None:
                out[name] = round(rtt, 3)
        return out

    # --- misc ------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        if self._notify is not None:
            self._notify(line)
        else:
            log.info("%s", line)

    def _spawn(self, coro: Awaitable[object]) -> None:
        async def run() -> None:
            with contextlib.suppress(Exception):
                await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop every dial and probe. Idempotent (links are closed by their transports)."""
        self._closed = True
        paths = list(self.paths.values())
        for p in paths:
            await p.aclose(close_links=False)
        for t in list(self._tasks):
            t.cancel()
