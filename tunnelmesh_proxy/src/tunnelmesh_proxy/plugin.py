"""Hook implementations of the proxy plugin (only hooks: the code lives beside it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    import click
    from tunnelmesh.registry import Registry


@hookimpl(tryfirst=True)
def tunnelmesh_register_proxy_rules(registry: Registry) -> None:
    """The mesh rule (X-Tunnelmesh-Peer, asked first), then the cmux rules.

    ``tryfirst``: these are registered before any other plugin's rules, so asked before them.
    """
    from tunnelmesh_proxy.mesh import MeshPeerRule
    from tunnelmesh_proxy.routing import CmuxRule

    registry.add_proxy_rule(MeshPeerRule)
    registry.add_proxy_rule(CmuxRule)


@hookimpl
def tunnelmesh_register_commands(cli: click.Group) -> None:
    from tunnelmesh.cli.lazy import add_lazy_command  # the command itself is imported on use

    """``tunnelmesh proxy`` (serve), ``tunnelmesh proxy shim build``, ``tunnelmesh proxy run``."""
    add_lazy_command(
        cli,
        "proxy",
        "tunnelmesh_proxy.cli:proxy",
        "Header-routed reverse proxy: one port reaches the services of every workspace.",
    )
