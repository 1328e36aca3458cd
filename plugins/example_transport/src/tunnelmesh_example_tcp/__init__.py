"""Example third-party tunnelmesh transport: WireGuard messages over plain TCP.

``TcpTransport`` is imported on first use: loading the plugin (every ``tunnelmesh`` command does)
then costs nothing until a node asks for the transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunnelmesh_example_tcp.transport import TcpTransport

__all__ = ["TcpTransport"]


def __getattr__(name: str) -> Any:
    if name == "TcpTransport":
        from tunnelmesh_example_tcp.transport import TcpTransport

        return TcpTransport
    raise AttributeError(f"module 'tunnelmesh_example_tcp' has no attribute {name!r}")
