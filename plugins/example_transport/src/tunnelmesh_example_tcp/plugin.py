"""The plugin's hooks: tunnelmesh finds this module through the ``tunnelmesh`` entry point."""

from __future__ import annotations

from tunnelmesh import hookimpl


@hookimpl
def tunnelmesh_register_transports(registry):  # type: ignore[no-untyped-def]
    from tunnelmesh_example_tcp.transport import TcpTransport

    registry.add_transport(TcpTransport)
