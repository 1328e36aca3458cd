"""tunnelmesh: a peer-to-peer encrypted mesh network, built as a plugin framework.

Plugins import :data:`hookimpl` to mark their hook implementations::

    from tunnelmesh import hookimpl

    @hookimpl
    def tunnelmesh_register_transports(registry):
        registry.add_transport(MyTransport)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pluggy

from tunnelmesh.errors import (
    ConfigError,
    PluginError,
    ProtocolError,
    StorageError,
    TransportError,
    TunnelmeshError,
)
from tunnelmesh.policy import Policy, route_policy

try:
    __version__ = version("tunnelmesh")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

PROJECT_NAME = "tunnelmesh"
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: ``@hookimpl`` on a ``tunnelmesh_*`` function."""

__all__ = [
    "PROJECT_NAME",
    "ConfigError",
    "PluginError",
    "Policy",
    "ProtocolError",
    "StorageError",
    "TransportError",
    "TunnelmeshError",
    "__version__",
    "hookimpl",
    "route_policy",
]
