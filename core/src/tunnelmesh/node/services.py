"""Node: what it runs and follows beside the packet path (functions bound as methods of
:class:`~tunnelmesh.node.node.Node`).

The DNS resolver (this node's name and aliases, the mesh's WireGuard clients' names, and on a
concentrator also ``<mesh IP>:53`` for its clients), the routes of the mesh's WireGuard clients
(:mod:`tunnelmesh.node.clients`), and the coordinator's layer of the packet filter following the
pushes (a rule's source peer is a key, applied to the name that key has now).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from tunnelmesh.abc import ConcentratorView
from tunnelmesh.errors import TunnelmeshError
from tunnelmesh.node.clients import ClientRoutes

if TYPE_CHECKING:
    from tunnelmesh.node.node import Node

log = logging.getLogger("tunnelmesh.node.node")
"""Node's log: every part of it logs under the name it always had."""


def _follow_clients(self: Node) -> None:
    """Route the mesh's WireGuard clients (:mod:`tunnelmesh.node.clients`): to their
    concentrator, or, on the concentrator, to the engine that serves them. Peer changes
    re-check them (a concentrator that comes, goes or is renamed)."""
    forwarder = self.forwarder
    assert forwarder is not None

    def set_relay(on: bool) -> None:
        forwarder.relay = on

    from tunnelmesh.control.peertable import ClientsChanged, PeerChange

    clients = self.wg_clients = ClientRoutes(
        self.routes, self.identity.peer_id, self._peer_name, set_relay=set_relay
    )
    clients.apply(self.client.table.clients)  # the cached list first

    def follow(change: PeerChange) -> None:
        if isinstance(change, ClientsChanged):
            clients.apply(change.clients)
        else:
            clients.refresh()

    self.client.add_callback(follow)


def set_concentrator(self: Node, concentrator: ConcentratorView | None) -> None:
    """The WireGuard concentrator running on this node (``tunnelmesh_wg``), or None.

    A concentrator's resolver also answers on ``<mesh IP>:53``: the DNS server its clients
    are given (their queries arrive through the TUN device like any peer's)."""
    self.concentrator = concentrator
    if concentrator is not None and self.dns is not None and self._client_dns is None:
        self._client_dns = asyncio.get_running_loop().create_task(self._serve_client_dns())


async def _serve_client_dns(self: Node) -> None:
    assert self.dns is not None
    address = f"{self.mesh_ip}:53"
    try:
        await self.dns.serve_also(address)
    except TunnelmeshError as exc:
        log.warning("DNS for WireGuard clients not served on %s: %s", address, exc)
        self.notify(f"warning: DNS for WireGuard clients not served on {address}: {exc}")
        return
    self.notify(f"DNS for WireGuard clients on {address}")


def _peer_name(self: Node, peer_id: str) -> str | None:
    """The name the key ``peer_id`` has in the peer table now (None: not in the mesh)."""
    info = self.client.table.peers.get(peer_id)
    return info.name if info is not None else None


def _source_name(self: Node, peer_id: str) -> str | None:
    """The name of the peer or WireGuard client with ID ``peer_id`` now (None: neither):
    the filter's rules name a source by ID, and a client is a source like a peer."""
    name = self._peer_name(peer_id)
    if name is None:
        for c in self.client.table.clients or ():
            if c.client_id == peer_id:
                return c.name
    return name


def _follow_filter_rules(self: Node) -> None:
    """The coordinator layer of the filter follows the coordinator's pushes (starting from
    the cached rules, so a restart while the coordinator is away keeps enforcing them).

    The coordinator names a rule's source peer by its peer ID; the forwarder knows peers
    by name, so each such rule is applied to the name that key has now, and re-applied
    when peers come, go or rename: a peer that takes a name with another key never gets
    the rules of the name's former key. peer.yaml rules whose source is a peer ID follow
    the peer changes the same way."""
    from tunnelmesh.control.peertable import FilterRulesChanged, PeerChange

    table = self.client.table
    peer_name = self._source_name

    def apply(change: PeerChange | None) -> None:
        if self.filter_service is None:
            return
        self.filter_service.follow_peers(peer_name)  # peer.yaml rules by peer ID
        rules = table.filter_rules
        if rules is None:
            return
        if isinstance(change, FilterRulesChanged):
            self.notify(f"coordinator filter rules: {len(rules)}")
        elif not any(r.source_peer for r in rules):
            return  # a peer change matters only to rules about a source peer
        self.filter_service.set_coordinator_rules(rules, peer_name)

    apply(None)
    self.client.add_callback(apply)


def _follow_client_names(self: Node, backend: Any) -> None:
    """``<client>.<domain>`` answers each active concentrator client's mesh IP (the
    coordinator's client list, as pushed; an expiry is pushed when it passes)."""
    from tunnelmesh.control.peertable import ClientsChanged, PeerChange

    if self.client.table.clients is not None:
        backend.set_clients(self.client.table.clients)

    def apply(change: PeerChange) -> None:
        if isinstance(change, ClientsChanged):
            backend.set_clients(change.clients)

    self.client.add_callback(apply)


async def _start_dns(self: Node) -> None:
    if not self.config.dns.enabled:
        return
    from tunnelmesh.dns import DnsService

    dns = DnsService.from_config(
        self.config.dns,
        link=self.config.tun.name,
        networks=[self.mesh_cidr],
        local_name=self.name,
    )
    dns.backend.set(self.name, [self.mesh_ip], coordinator=self.coordinator)
    for alias in self.config.dns.aliases:
        dns.backend.set(alias, [self.mesh_ip])
    try:
        await dns.start()
    except (OSError, TunnelmeshError) as exc:
        log.warning("DNS resolver not started: %s", exc)
        self.notify(f"warning: DNS resolver not started: {exc}")
        return
    self.dns = dns
