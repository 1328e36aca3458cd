"""Node: the network under the mesh (functions bound as methods of
:class:`~tunnelmesh.node.node.Node`).

The reflexive (STUN) address of the UDP port, asked before a transport binds it and again
from the UDP transport's own socket after a network change; a change of the underlay (netlink,
debounced) re-learns the endpoints and tells the coordinator, every transport, the paths and the
exit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tunnelmesh.abc import StunProber
from tunnelmesh.errors import TunnelmeshError
from tunnelmesh.node.endpoints import local_endpoints

if TYPE_CHECKING:
    from tunnelmesh.node.node import Node

log = logging.getLogger("tunnelmesh.node.node")
"""Node's log: every part of it logs under the name it always had."""


async def _stun_server(self: Node) -> tuple[str, int] | None:
    host = urlsplit(self.context.server).hostname or ""
    if not (self.context.stun_port and host and self.listen_port):
        return None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        return str(infos[0][4][0]), self.context.stun_port
    except (OSError, IndexError):
        return None


async def _stun(self: Node) -> None:
    """Learn the reflexive address of the listen port, over UDP (after the transports are
    built, before any binds it), when a transport can use it: one that punches NATs
    (``capabilities.nat_punch``, the UDP transport). A TCP or relayed transport cannot reach a
    peer at the address a NAT gave a UDP port, so without one nothing is asked."""
    from tunnelmesh.control.daemon import stun_query

    if not any(t.capabilities.nat_punch for t in self.transports):
        return
    server = await self._stun_server()
    if server is None:
        return
    locals_before = sorted(local_endpoints(self.listen_port, exclude=[self.mesh_cidr]))
    mapped = await stun_query(server[0], server[1], local_port=self.listen_port)
    if mapped is not None:
        self.reflexive = [f"{mapped[0]}:{mapped[1]}"]
        self._stun_locals = locals_before


async def _network_changed(self: Node) -> None:
    """Netlink saw the underlay change (debounced): re-learn the endpoints, tell the
    coordinator, re-check every path."""
    eps = local_endpoints(self.listen_port, exclude=[self.mesh_cidr])
    self.network_changes += 1
    self.notify(f"network changed: local endpoints {', '.join(eps) or '-'}")
    self.endpoints()  # drops a reflexive address learnt on the old network
    self.client.network_changed()
    for transport in self.transports:
        try:
            transport.network_changed()
        except Exception:
            log.exception("transport %s: network_changed failed", transport.name)
    if self.sync is not None:
        self.sync.network_changed()
    if self.exit is not None:
        await self.exit.network_changed()  # an exit's own LAN prefixes may have changed
    # the reflexive address, asked from the UDP transport's own socket
    udp = next((t for t in self.transports if isinstance(t, StunProber)), None)
    server = await self._stun_server() if udp is not None else None
    if udp is None or server is None:
        return
    try:
        mapped = await udp.stun(server[0], server[1], timeout=0.5, attempts=3)
    except TunnelmeshError:
        return
    if mapped is not None:
        self.reflexive = [f"{mapped[0]}:{mapped[1]}"]
        self._stun_locals = sorted(eps)
        self.client.heartbeat_now()
