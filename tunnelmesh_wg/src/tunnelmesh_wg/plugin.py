"""Hook implementations of the ``wg`` plugin (nothing else lives here)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    import click
    from aiohttp import web
    from tunnelmesh.abc import CoordinatorView, NodeView
    from tunnelmesh.registry import Registry

    from tunnelmesh_wg.concentrator import Concentrator

log = logging.getLogger(__name__)

_running: dict[int, Concentrator] = {}
"""The concentrator of each running node (by ``id(node)``), from started to stopping."""


@hookimpl
def tunnelmesh_register_commands(cli: click.Group) -> None:
    from tunnelmesh.cli.lazy import add_lazy_command  # the command itself is imported on use

    add_lazy_command(
        cli,
        "wg",
        "tunnelmesh_wg.cli:wg",
        "WireGuard clients (phones, laptops) of the mesh's concentrators.",
    )


@hookimpl
def tunnelmesh_register_admin_panels(registry: Registry) -> None:
    """The dashboard's WireGuard clients page: rows from ``GET /api/v1/wg/clients`` (members)."""
    from tunnelmesh.registry import AdminPanel

    from tunnelmesh_wg.routes import PANEL_COLUMNS

    registry.add_admin_panel(
        AdminPanel("wireguard", "WireGuard clients", "/api/v1/wg/clients", "clients", PANEL_COLUMNS)
    )


@hookimpl
def tunnelmesh_register_config_sections(registry: Registry) -> None:
    from tunnelmesh_wg.concentrator import WireGuardSection

    registry.add_config_section("wireguard", WireGuardSection, server=False, peer=True)


@hookimpl
def tunnelmesh_node_started(node: NodeView) -> None:
    """A node with ``wireguard.enabled`` starts serving its WireGuard clients."""
    from tunnelmesh.abc import ConcentratorHost

    from tunnelmesh_wg.concentrator import Concentrator, section_of

    section = section_of(node.config)
    if section is None:
        return
    if not isinstance(node, ConcentratorHost):
        log.warning("wireguard: this node cannot serve WireGuard clients; not started")
        return
    concentrator = Concentrator(node, section)
    concentrator.start()
    node.set_concentrator(concentrator)
    _running[id(node)] = concentrator
    log.info(
        "wireguard concentrator on UDP port %d (clients dial %s)",
        concentrator.port,
        section.endpoint,
    )


@hookimpl
def tunnelmesh_node_stopping(node: NodeView) -> None:
    concentrator = _running.pop(id(node), None)
    if concentrator is not None:
        concentrator.close()
        from tunnelmesh.abc import ConcentratorHost

        if isinstance(node, ConcentratorHost):
            node.set_concentrator(None)


@hookimpl
def tunnelmesh_register_coordinator_routes(
    app: web.Application, coordinator: CoordinatorView
) -> None:
    """The WireGuard client routes (``/api/v1/wg/clients``; admins add and change clients)."""
    from tunnelmesh_wg.routes import install

    install(app, coordinator)
