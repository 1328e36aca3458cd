"""The routing table: mesh IP address to peer, O(1) on the forwarding path.

The control plane keeps it current; the forwarder only reads it. Update API (called from the
coordinator's push channel, or from a static configuration)::

    table.set_peer(name, public_key=..., mesh_ips=["10.42.0.7"], endpoints=["192.0.2.7:2223"])
    table.set_link(name, link)     # a transport opened a link to that peer
    table.set_peer("phone", mesh_ips=["10.42.0.50"], via="conc")   # carried by peer "conc"
    table.set_peer("phone", mesh_ips=["10.42.0.50"], client=True)  # on "conc" itself
    table.set_peer("phone", mesh_ips=["10.42.0.50"], client=True, exit="ex")  # full tunnel
    table.remove_peer(name)        # drops its routes and forgets its link
    table.subscribe(callback)      # callback(route) after every set_peer / remove_peer

``mesh_ips`` are host addresses (looked up in one dict keyed by the packed address) or CIDRs
(``10.42.7.0/24``, WireGuard-style allowed IPs, checked longest prefix first, only when the
host lookup misses). The same table answers "which peer owns this source address", which the
forwarder uses to drop spoofed packets.

WireGuard clients (``tunnelmesh_wg``) are routes too, named after the client. On the node that
serves a client (its concentrator) the route is marked ``client``: its link is the
concentrator's link to that client, and the forwarder relays between the client and the mesh.
On every other node the route has ``via=<concentrator name>``: it always uses the
concentrator's link (kept in step by :meth:`RoutingTable.set_link`), and the forwarder accepts
the client's source address from that concentrator only. A served client with an ``exit``
(``tunnelmesh wg add --full-tunnel EXIT``) has its packets for outside the mesh relayed to that
exit's link, and the exit's answers (outside source addresses) accepted toward it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunnelmesh.abc import Link

__all__ = ["PeerRoute", "RoutingTable"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PeerRoute:
    """What the data plane knows of one peer."""

    __slots__ = ("client", "endpoints", "exit", "link", "mesh_ips", "name", "public_key", "via")

    def __init__(self, name: str) -> None:
        self.name = name
        self.public_key = b""
        self.mesh_ips: tuple[str, ...] = ()
        self.endpoints: tuple[str, ...] = ()
        self.link: Link | None = None
        self.via = ""
        """The peer whose link carries this route (a WireGuard client behind its concentrator);
        empty: the route's own link."""
        self.client = False
        """A WireGuard client served by this node: the forwarder relays its packets."""
        self.exit = ""
        """A served client's exit (``--full-tunnel``): the route its packets for outside the
        mesh go to, and the only one whose outside sources are accepted toward it."""

    def __repr__(self) -> str:
        return f"<PeerRoute {self.name} {list(self.mesh_ips)}>"


class RoutingTable:
    """Mesh addresses to :class:`PeerRoute`; see the module docstring for the update API."""

    def __init__(self) -> None:
        self.peers: dict[str, PeerRoute] = {}
        self.by_ip: dict[bytes, PeerRoute] = {}
        self._prefixes: list[tuple[Network, PeerRoute]] = []
        self._subscribers: list[Callable[[PeerRoute], None]] = []

    def subscribe(self, callback: Callable[[PeerRoute], None]) -> None:
        """Call ``callback(route)`` after each change of a peer (also removal)."""
        self._subscribers.append(callback)

    def set_peer(
        self,
        name: str,
        *,
        public_key: bytes = b"",
        mesh_ips: Sequence[str] = (),
        endpoints: Sequence[str] = (),
        via: str = "",
        client: bool = False,
        exit: str = "",
    ) -> PeerRoute:
        """Add or replace a peer's key, addresses and endpoints (its link is kept).

        ``via`` names the peer whose link carries this route (the route takes that peer's link,
        now and whenever it changes); ``client`` marks a WireGuard client this node serves,
        ``exit`` names that client's exit route (its internet traffic goes there).
        """
        route = self.peers.get(name)
        if route is None:
            route = self.peers[name] = PeerRoute(name)
        else:
            self._unindex(route)
        route.public_key = public_key
        route.mesh_ips = tuple(mesh_ips)
        route.endpoints = tuple(endpoints)
        route.client = client
        route.exit = exit if client else ""
        if via != route.via:
            route.via = via
            carrier = self.peers.get(via) if via else None
            route.link = carrier.link if carrier is not None else None
        for item in route.mesh_ips:
            net = ipaddress.ip_network(item, strict=False)
            if net.num_addresses == 1:
                self.by_ip[net.network_address.packed] = route
            else:
                self._prefixes.append((net, route))
        self._prefixes.sort(key=lambda pr: pr[0].prefixlen, reverse=True)
        for callback in self._subscribers:
            callback(route)
        return route

    def remove_peer(self, name: str) -> PeerRoute | None:
        """Forget a peer, its routes and its link."""
        route = self.peers.pop(name, None)
        if route is not None:
            self._unindex(route)
            route.link = None
            for carried in self.peers.values():
                if carried.via == name:
                    carried.link = None
            for callback in self._subscribers:
                callback(route)
        return route

    def set_link(self, name: str, link: Link | None) -> None:
        """Attach (or detach, with None) the link that carries a peer's packets (and the
        packets of the routes it carries, ``via`` it)."""
        route = self.peers.get(name)
        if route is not None:
            route.link = link
            for carried in self.peers.values():
                if carried.via == name:
                    carried.link = link

    def _unindex(self, route: PeerRoute) -> None:
        for key in [k for k, r in self.by_ip.items() if r is route]:
            del self.by_ip[key]
        self._prefixes = [(n, r) for n, r in self._prefixes if r is not route]

    def lookup(self, address: bytes) -> PeerRoute | None:
        """The peer that owns a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
        route = self.by_ip.get(address)
        if route is None and self._prefixes:
            ip = ipaddress.ip_address(address)
            for net, candidate in self._prefixes:
                if ip.version == net.version and ip in net:
                    return candidate
        return route
