"""Node: what it reports about itself (functions bound as methods of
:class:`~tunnelmesh.node.node.Node`).

The status each heartbeat carries (per-peer transports, RTTs, traffic counters, a
concentrator's clients) and the ``node.status`` control command's answer (this node, its
transports, every peer's route, link and paths).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from tunnelmesh.aio.wgsession import WireGuardLink
from tunnelmesh.control.client import PeerStatus
from tunnelmesh.control.messages import ClientStatus, ConcentratorStatus, Counters

if TYPE_CHECKING:
    from tunnelmesh.node.node import Node

log = logging.getLogger("tunnelmesh.node.node")
"""Node's log: every part of it logs under the name it always had."""


def status(self: Node) -> PeerStatus:
    """Per-peer transports and this node's traffic counters, for the heartbeats."""
    st = self.forwarder.stats if self.forwarder is not None else {}
    sync = self.sync
    transports = dict(sync.link_transport) if sync is not None else {}
    rtt = sync.rtt_ms() if sync is not None else {}
    reasons = sync.reasons() if sync is not None else {}
    dropped = sum(v for k, v in st.items() if k.startswith("dropped"))
    rx_bytes = tx_bytes = 0
    for t in self.transports:
        for rx, tx in t.traffic().values():
            rx_bytes += rx
            tx_bytes += tx
    return PeerStatus(
        transports=transports,
        rtt_ms=rtt,
        reasons=reasons,
        counters=Counters(
            bytes_sent=tx_bytes,
            bytes_received=rx_bytes,
            packets_sent=st.get("tx_packets", 0),
            packets_received=st.get("rx_packets", 0),
            dropped=dropped,
        ),
        allow_exit_traffic=self.config.allow_exit_traffic,
        aliases=list(self.config.dns.aliases),
        transport_order=list(sync.transport_order) if sync is not None else [],
        location=self.config.location,
        concentrator=self._concentrator_status(),
    )


def _concentrator_status(self: Node) -> ConcentratorStatus | None:
    conc = self.concentrator
    if conc is None:
        return None
    return ConcentratorStatus(
        endpoint=conc.endpoint,
        clients={cid: msgspec.convert(st, ClientStatus) for cid, st in conc.status().items()},
    )


def describe(self: Node) -> dict[str, Any]:
    """The ``node.status`` control command: this node, its transports and its peers."""
    peers = []
    traffic: dict[str, tuple[int, int]] = {}
    for t in self.transports:
        traffic.update(t.traffic())
    for name, route in sorted(self.routes.peers.items()):
        info = self.sync.peers.get(name) if self.sync is not None else None
        paths = self.sync.paths.get(name) if self.sync is not None else None
        wg_peer = route.link.wg_peer if isinstance(route.link, WireGuardLink) else None
        endpoint = wg_peer.endpoint if wg_peer is not None else None
        last = wg_peer.last_handshake if wg_peer is not None else None
        if wg_peer is not None:
            rx_bytes, tx_bytes = wg_peer.rx_bytes, wg_peer.tx_bytes
        else:  # a link no WireGuard engine seals (SSH): its transport's count
            rx_bytes, tx_bytes = traffic.get(name, (0, 0))
        peers.append(
            {
                "name": name,
                "mesh_ip": route.mesh_ips[0] if route.mesh_ips else "",
                "endpoints": list(route.endpoints),
                "online": bool(info.online) if info is not None else False,
                "link": route.link is not None,
                "transport": self.sync.link_transport.get(name, "")
                if self.sync is not None
                else "",
                "endpoint": f"{endpoint[0]}:{endpoint[1]}" if endpoint else "",
                "handshake": last is not None,
                "rx_bytes": rx_bytes,
                "tx_bytes": tx_bytes,
                "reason": paths.reason if paths is not None else "",
                "rtt_ms": paths.rtt_ms() if paths is not None else None,
                "paths": paths.describe()["paths"] if paths is not None else {},
                "order": paths.selector.order if paths is not None else [],
            }
        )
    return {
        "name": self.name,
        "mesh_ip": self.mesh_ip,
        "mesh_cidr": self.mesh_cidr,
        "tun": self.config.tun.name,
        "transports": [t.name for t in self.transports],
        "endpoints": self.endpoints(),
        "coordinator_reachable": self.client.reachable,
        "network_changes": self.network_changes,
        "uptime": time.monotonic() - self.started_at if self.started_at else 0.0,
        "forwarder": dict(self.forwarder.stats) if self.forwarder is not None else {},
        "peers": peers,
        "exit": self.exit.describe() if self.exit is not None else None,
        "concentrator": self.concentrator.describe() if self.concentrator else None,
    }
