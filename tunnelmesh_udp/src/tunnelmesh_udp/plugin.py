"""Hook implementations of the ``udp`` plugin (nothing else lives here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    import click
    from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_transports(registry: Registry) -> None:
    from tunnelmesh_udp.transport import UdpTransport

    registry.add_transport(UdpTransport)


@hookimpl
def tunnelmesh_register_commands(cli: click.Group) -> None:
    from tunnelmesh.cli.lazy import add_lazy_command  # the command itself is imported on use

    add_lazy_command(
        cli, "udp", "tunnelmesh_udp.cli:udp", "The WireGuard-compatible UDP transport."
    )
