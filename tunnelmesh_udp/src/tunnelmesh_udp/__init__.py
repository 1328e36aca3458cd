"""The ``udp`` transport: WireGuard on the wire, over UDP (see :mod:`tunnelmesh_udp.transport`)."""

from __future__ import annotations

from tunnelmesh_udp.static import StaticConfig, StaticPeer, load_static_config, run_static
from tunnelmesh_udp.transport import UdpTransport

__all__ = ["StaticConfig", "StaticPeer", "UdpTransport", "load_static_config", "run_static"]
