"""Example third-party tunnelmesh transport: WireGuard messages over plain TCP."""

from tunnelmesh_example_tcp.transport import TcpTransport

__all__ = ["TcpTransport"]
