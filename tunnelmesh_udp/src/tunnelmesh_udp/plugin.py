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
    from tunnelmesh_udp.cli import udp

    cli.add_command(udp)
