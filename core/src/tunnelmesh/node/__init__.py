"""The mesh node daemon: what ``tunnelmesh join`` runs once registered.

* :class:`Node` (:mod:`tunnelmesh.node.node`): identity, control client, TUN device, routing
  table, forwarder, the plugins' transports and filters, DNS, and the node hooks.
* :class:`PeerSync` (:mod:`tunnelmesh.node.peers`): the coordinator's peer events applied to
  the routing table and the transports.
* :mod:`tunnelmesh.node.negotiate`: the sans-IO path selector (order, fallback, probing
  back, quality); :mod:`tunnelmesh.node.paths` drives it per peer (dials, in-link probes).
* :mod:`tunnelmesh.node.endpoints`: this node's endpoints and the order to try a peer's.
"""

from __future__ import annotations

from tunnelmesh.node.node import Node, NodeError, can_create_tun
from tunnelmesh.node.peers import PeerSync

__all__ = ["Node", "NodeError", "PeerSync", "can_create_tun"]
