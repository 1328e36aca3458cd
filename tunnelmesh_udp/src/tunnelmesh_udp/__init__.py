"""The ``udp`` transport: WireGuard on the wire, over UDP (see :mod:`tunnelmesh_udp.transport`).

The names below are imported on first use, so loading the plugin (``tunnelmesh --help``) does
not import the transport.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunnelmesh_udp.static import StaticConfig, StaticPeer, load_static_config, run_static
    from tunnelmesh_udp.transport import UdpTransport

__all__ = ["StaticConfig", "StaticPeer", "UdpTransport", "load_static_config", "run_static"]

_HOMES = {
    "StaticConfig": "tunnelmesh_udp.static",
    "StaticPeer": "tunnelmesh_udp.static",
    "load_static_config": "tunnelmesh_udp.static",
    "run_static": "tunnelmesh_udp.static",
    "UdpTransport": "tunnelmesh_udp.transport",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tunnelmesh_udp' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
