"""Hook implementations of the ``relay`` plugin (nothing else lives here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    from aiohttp import web
    from tunnelmesh.abc import CoordinatorView
    from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_transports(registry: Registry) -> None:
    from tunnelmesh_relay.transport import RelayTransport

    registry.add_transport(RelayTransport)


@hookimpl
def tunnelmesh_register_config_sections(registry: Registry) -> None:
    from tunnelmesh_relay.server import RelayConfig

    registry.add_config_section("relay", RelayConfig, server=True, peer=False)


@hookimpl
def tunnelmesh_register_coordinator_routes(
    app: web.Application, coordinator: CoordinatorView
) -> None:
    from tunnelmesh_relay.server import add_routes

    add_routes(app, coordinator)
