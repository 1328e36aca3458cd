"""Hook implementations of the ``wg`` plugin (nothing else lives here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    import click


@hookimpl
def tunnelmesh_register_commands(cli: click.Group) -> None:
    from tunnelmesh.cli.lazy import add_lazy_command  # the command itself is imported on use

    add_lazy_command(
        cli,
        "wg",
        "tunnelmesh_wg.cli:wg",
        "WireGuard clients (phones, laptops) of the mesh's concentrators.",
    )
