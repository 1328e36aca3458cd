"""Hook implementations of the ``admin`` plugin (nothing else lives here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    from aiohttp import web
    from tunnelmesh.abc import CoordinatorView
    from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_config_sections(registry: Registry) -> None:
    from tunnelmesh_admin.config import AdminSection

    registry.add_config_section("admin", AdminSection, server=True, peer=False)


@hookimpl
def tunnelmesh_register_coordinator_routes(
    app: web.Application, coordinator: CoordinatorView
) -> None:
    """With ``admin: {enabled: true}``: the dashboard on the coordinator's mesh IP."""
    from tunnelmesh_admin.service import install

    install(app, coordinator)
