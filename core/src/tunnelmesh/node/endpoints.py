"""This node's endpoints, and the order in which to try a peer's.

A node publishes ``ip:port`` endpoints in its heartbeats: every local IPv4 interface address
(except loopback and the mesh's own addresses) with the UDP transport's port, plus the
STUN-reflexive address, which is what a NAT in front of the node shows the coordinator. The
reflexive address is asked *from the transport's port before the transport binds it*, so the
mapping a full-cone NAT shows is the one the transport then uses.

A peer's endpoints are tried in :func:`order_endpoints` order: first those on a network this
node is directly connected to, then public addresses, then other private ones; endpoints this
node has no route to at all are left out (a peer's LAN address behind a NAT, seen from outside).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence

from tunnelmesh.hostaddrs import interface_networks

__all__ = ["interface_networks", "local_endpoints", "order_endpoints", "routable"]


def local_endpoints(
    port: int,
    *,
    exclude: Iterable[str] = (),
    interfaces: Sequence[ipaddress.IPv4Interface] | None = None,
) -> list[str]:
    """``ip:port`` for each non-loopback interface address outside the ``exclude`` CIDRs."""
    nets = [ipaddress.ip_network(c, strict=False) for c in exclude]
    out: list[str] = []
    for iface in interface_networks() if interfaces is None else interfaces:
        ip = iface.ip
        if ip.is_loopback or ip.is_link_local or any(ip in n for n in nets):
            continue
        ep = f"{ip}:{port}"
        if ep not in out:
            out.append(ep)
    return out


def routable(host: str) -> bool:
    """Whether this host has a route to ``host`` (a UDP connect: nothing is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
        except OSError:
            return False
    return True


def _split(endpoint: str) -> tuple[str, int] | None:
    host, _, port = endpoint.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def order_endpoints(
    endpoints: Iterable[str],
    *,
    interfaces: Sequence[ipaddress.IPv4Interface] | None = None,
    exclude: Iterable[str] = (),
    is_routable: Callable[[str], bool] | None = None,
) -> list[str]:
    """A peer's endpoints in the order to try them, unreachable ones left out.

    Args:
        endpoints: what the peer published (``host:port``).
        interfaces: this host's addresses with prefixes (default: read from the kernel).
        exclude: CIDRs never to use as an underlay (the mesh itself).
        is_routable: ``callable(host) -> bool`` (default :func:`routable`), for tests.
    """
    check = is_routable or routable
    ifaces = interface_networks() if interfaces is None else list(interfaces)
    own = {str(i.ip) for i in ifaces}
    nets = [ipaddress.ip_network(c, strict=False) for c in exclude]
    ranked: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for i, ep in enumerate(endpoints):
        parts = _split(ep)
        if parts is None or ep in seen:
            continue
        seen.add(ep)
        host, _port = parts
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if ip.is_loopback or host in own or any(ip in n for n in nets):
            continue
        if any(ip in iface.network for iface in ifaces if not iface.ip.is_loopback):
            rank = 0  # same link: the shortest path
        elif not check(host):
            continue
        elif ip.is_global or ip in ipaddress.ip_network("100.64.0.0/10"):
            rank = 1  # public (often the reflexive address)
        else:
            rank = 2  # someone else's private network: might be a different host
        ranked.append((rank, i, ep))
    return [ep for _, _, ep in sorted(ranked)]
