"""The dashboard's server decides: callers by mesh IP, members see, admins change, same origin.

Each check goes through real HTTPS to the dashboard's listener, from a socket bound to the
caller's mesh IP (see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest
from tunnelmesh import Policy
from tunnelmesh.coordinator.api import route_table
from tunnelmesh.coordinator.ca import COORDINATOR_NAME
from tunnelmesh_admin.security import CSP
from tunnelmesh_admin.service import EXCLUDED_ROUTES, install
from tunnelmesh_admin.testing import running_mesh, server_config

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def _fill(template: str, name: str) -> str:
    return _PARAM.sub(lambda m: name if m.group(1) == "name" else "authz", template)


def test_a_member_gets_403_from_the_server_for_every_admin_action(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            admin = mesh.browser(mesh.mesh_ip(mesh.callers.admin))
            assert mesh.service.app is not None
            table = route_table(mesh.service.app)
            admin_routes = [
                (m, p, pol)
                for m, p, pol in table
                if m != "HEAD" and pol in (Policy.ADMIN, Policy.SELF_OR_ADMIN)
            ]
            assert ("POST", "/api/v1/groups", Policy.ADMIN) in admin_routes
            assert ("DELETE", "/api/v1/peers/{name}", Policy.SELF_OR_ADMIN) in admin_routes
            for method, template, _ in admin_routes:
                # another peer's name: self-or-admin routes are admin routes for the member
                target = await mesh.callers.register(f"target-{len(mesh.callers._clients)}")
                assert target.registration is not None
                path = _fill(template, target.registration.name)
                status, _, body = await member.call(method, path, json={})
                assert status == 403, (method, path, status, body)
                assert json.loads(body)["error"] == "forbidden"
                # the same request from the admin passes the policy (it may still be a 400)
                status, _, body = await admin.call(method, path, json={"name": "authz"})
                assert status not in (401, 403), (method, path, status, body)
            assert len(admin_routes) >= 6
            assert mesh.service.refused["cross_origin"] == 0  # each was refused by its policy

    run(main())


def test_members_see_every_page_and_the_api(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            admin_name = mesh.callers.admin.registration.name  # type: ignore[union-attr]
            for path in ("/", "/peers", f"/peers/{admin_name}", "/filter", "/dns", "/groups"):
                status, headers, body = await member.call("GET", path)
                assert status == 200, (path, body[:300])
                assert headers["Content-Type"].startswith("text/html")
                assert headers["Content-Security-Policy"] == CSP
                assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
                assert "frame-ancestors 'none'" in CSP
                assert headers["Strict-Transport-Security"].startswith("max-age=")
                assert headers["X-Content-Type-Options"] == "nosniff"
                assert headers["Server-Timing"].startswith("app;dur=")
                html = body.decode()
                assert "<script>" not in html and " on" + "click=" not in html  # no inline script
                assert 'style="' not in html  # style-src 'self' would block it
                assert "member" in html
            status, _, body = await member.call("GET", "/api/v1/peers")
            assert status == 200
            names = {p["name"] for p in json.loads(body)["peers"]}
            assert admin_name in names
            status, headers, body = await member.call("GET", "/static/app.js")
            assert status == 200 and headers["Content-Type"].startswith(
                ("text/javascript", "application/javascript")
            )
            status, _, _ = await member.call("GET", "/static/../service.py")
            assert status == 404

    run(main())


def test_a_cross_origin_post_gets_403_and_changes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            admin = mesh.browser(mesh.mesh_ip(mesh.callers.admin))
            groups = mesh.server.coordinator.groups
            cases: list[tuple[str | None, dict[str, str]]] = [
                ("https://evil.example", {"Sec-Fetch-Site": "cross-site"}),
                ("https://evil.example", {}),
                (admin.origin, {"Sec-Fetch-Site": "same-site"}),
                (None, {}),  # no Origin at all
                ("null", {}),
            ]
            for origin, headers in cases:
                status, _, body = await admin.call(
                    "POST", "/api/v1/groups", json={"name": "ops"}, origin=origin, headers=headers
                )
                assert status == 403, (origin, headers, body)
                assert json.loads(body)["error"] == "cross_origin"
                assert not groups.exists("ops")
            assert mesh.service.refused["cross_origin"] == len(cases)
            status, _, _ = await admin.call(
                "POST",
                "/api/v1/groups",
                json={"name": "ops"},
                headers={"Sec-Fetch-Site": "same-origin"},
            )
            assert status == 201 and groups.exists("ops")

    run(main())


def test_a_source_that_is_no_peers_mesh_ip_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            used = {mesh.mesh_ip(mesh.callers.admin), mesh.mesh_ip(mesh.callers.peer)}
            stranger_ip = next(
                f"127.77.9.{i}" for i in range(2, 250) if f"127.77.9.{i}" not in used
            )
            for source in ("127.0.0.1", stranger_ip):
                b = mesh.browser(source)
                for method, path in (
                    ("GET", "/"),
                    ("GET", "/api/v1/peers"),
                    ("GET", "/static/app.css"),
                    ("GET", "/events"),
                    ("POST", "/api/v1/groups"),
                ):
                    status, headers, body = await b.call(method, path, json={"name": "x"})
                    assert status == 403, (source, path, status)
                    assert json.loads(body)["error"] == "not_a_mesh_peer"
                    assert headers["Content-Security-Policy"] == CSP
            assert not mesh.server.coordinator.groups.exists("x")
            # a Host the dashboard does not serve (a DNS-rebound name) is refused too
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            member.host = "evil.example"
            status, _, _ = await member.call("GET", "/")
            assert status == 421

    run(main())


def test_secrets_and_node_protocol_routes_are_not_served(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            admin = mesh.browser(mesh.mesh_ip(mesh.callers.admin))
            token_before = mesh.server.coordinator.auth_token
            for method, path in sorted(EXCLUDED_ROUTES):
                status, _, _ = await admin.call(method, path, json={})
                assert status in (404, 405), (method, path, status)
            assert mesh.server.coordinator.auth_token == token_before
            status, _, body = await admin.call("GET", "/api/v1/peers")
            assert b"session" not in body and TOKEN_FRAGMENT not in body

    TOKEN_FRAGMENT = b"admin-ui-token"
    run(main())


def test_the_dashboard_is_not_on_the_public_api_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            http = mesh.callers.http
            for path in ("/", "/peers", "/events", "/static/app.js"):
                async with http.get(
                    mesh.server.url + path, server_hostname=COORDINATOR_NAME
                ) as resp:
                    assert resp.status == 404, path

    run(main())


def test_without_join_mesh_the_coordinator_says_the_dashboard_needs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from aiohttp import web
    from tunnelmesh.coordinator import Coordinator

    cfg = server_config(tmp_path, listen="")
    coord = Coordinator(cfg)
    with caplog.at_level(logging.WARNING, logger="tunnelmesh_admin.service"):
        assert install(web.Application(), coord) is None
    assert "the dashboard needs join_mesh" in caplog.text
