"""tunnelmesh_register_admin_panels: a plugin's page in the dashboard, rows from its own route."""

from __future__ import annotations

import asyncio
import json
import types
from pathlib import Path
from typing import Any

from aiohttp import web
from tunnelmesh import Policy, hookimpl, route_policy
from tunnelmesh.registry import AdminPanel, Registry
from tunnelmesh_admin.testing import running_mesh


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


@route_policy(Policy.ADMIN)
async def widgets(request: web.Request) -> web.Response:
    return web.json_response({"widgets": [{"name": "w<1>", "size": 3}]})


def widget_plugin() -> types.ModuleType:
    mod = types.ModuleType("widgets")

    def tunnelmesh_register_admin_panels(registry: Registry) -> None:
        cols = (("name", "Name"), ("size", "Size"))
        registry.add_admin_panel(
            AdminPanel("widgets", "Widgets", "/api/v1/widgets", "widgets", cols)
        )
        registry.add_admin_panel(AdminPanel("ghost", "Ghost", "/api/v1/nothing", "x", cols))

    def tunnelmesh_register_coordinator_routes(app: web.Application, coordinator: Any) -> None:
        app.router.add_get("/api/v1/widgets", widgets)

    mod.tunnelmesh_register_admin_panels = hookimpl(tunnelmesh_register_admin_panels)  # type: ignore[attr-defined]
    mod.tunnelmesh_register_coordinator_routes = hookimpl(tunnelmesh_register_coordinator_routes)  # type: ignore[attr-defined]
    return mod


def test_a_plugin_panel_is_a_page_whose_rows_its_route_decides(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path, plugins=(widget_plugin(),)) as mesh:
            admin = mesh.browser(mesh.mesh_ip(mesh.callers.admin))
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            for b in (admin, member):
                status, _, page = await b.call("GET", "/panels/widgets")
                html = page.decode()
                assert status == 200
                assert 'href="/panels/widgets"' in html  # in the navigation
                assert 'data-api="/api/v1/widgets"' in html and 'data-key="size"' in html
                assert "/panels/ghost" not in html  # its route does not exist: not offered
            status, _, _ = await admin.call("GET", "/panels/ghost")
            assert status == 404
            status, _, body = await admin.call("GET", "/api/v1/widgets")
            assert status == 200 and json.loads(body)["widgets"][0]["name"] == "w<1>"
            status, _, _ = await member.call("GET", "/api/v1/widgets")
            assert status == 403  # the plugin route's own policy

    run(main())
