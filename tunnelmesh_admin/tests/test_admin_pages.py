"""Pages show what the coordinator holds, and admins change it through the same JSON API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tunnelmesh_admin.testing import running_mesh


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def test_an_admin_adds_and_removes_a_coordinator_rule_the_page_shows(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            admin = mesh.browser(mesh.mesh_ip(mesh.callers.admin))
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            coord = mesh.server.coordinator
            status, _, body = await admin.call(
                "POST",
                "/api/v1/filter/rules",
                json={"port": 5432, "protocol": "tcp", "action": "deny", "ttl": 600},
                headers={"Sec-Fetch-Site": "same-origin"},
            )
            assert status == 201, body
            assert [(r.port, r.action) for r in coord.filters.rules()] == [(5432, "deny")]
            _, _, page = await admin.call("GET", "/filter")
            html = page.decode()
            assert "5432" in html and "data-remove=" in html and "dashboard / API" in html
            _, _, page = await member.call("GET", "/filter")
            assert "5432" in page.decode() and b"data-remove=" not in page  # members see
            status, _, _ = await member.call("DELETE", "/api/v1/filter/rules/tcp/5432")
            assert status == 403 and coord.filters.rules()
            status, _, body = await admin.call("DELETE", "/api/v1/filter/rules/tcp/5432")
            assert status == 200, body
            assert coord.filters.rules() == []
            assert json.loads(body)["removed"]["port"] == 5432

    run(main())


def test_dns_and_groups_pages_show_the_mesh(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            admin = mesh.browser(mesh.mesh_ip(mesh.callers.admin))
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            peer_name = mesh.callers.peer.registration.name  # type: ignore[union-attr]
            _, _, page = await member.call("GET", "/dns")
            assert f"{peer_name}.tunnelmesh" in page.decode()
            status, _, _ = await admin.call(
                "POST",
                "/api/v1/groups",
                json={"name": "ops"},
                headers={"Sec-Fetch-Site": "same-origin"},
            )
            assert status == 201
            status, _, _ = await admin.call(
                "POST", "/api/v1/groups/ops/members", json={"add": [peer_name]}
            )
            assert status == 200
            _, _, page = await member.call("GET", "/groups")
            html = page.decode()
            assert 'data-group="ops"' in html and peer_name in html
            assert 'class="api' not in html  # no admin forms for a member
            _, _, page = await admin.call("GET", "/groups")
            assert 'class="api' in page.decode()

    run(main())


def test_the_map_places_peers_that_give_their_location(tmp_path: Path) -> None:
    from tunnelmesh.control.messages import Heartbeat, Location

    async def main() -> None:
        async with running_mesh(tmp_path, server_fields={"locations": True}) as mesh:
            coord = mesh.server.coordinator
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            peer_id = mesh.callers.peer.registration.peer_id  # type: ignore[union-attr]
            coord.heartbeat_pace.forget(peer_id)
            here = Location(lat=52.52, lon=13.4, city="Berlin <Mitte>")
            coord.heartbeat(coord.peers[peer_id], Heartbeat(location=here), "")
            status, _, page = await member.call("GET", "/map")
            html = page.decode()
            assert status == 200 and 'href="/map"' in html
            assert html.count('class="marker') == 1
            assert 'cx="537.2" cy="104.1"' in html  # Berlin on the projection
            assert "Berlin &lt;Mitte&gt;" in html and "<Mitte>" not in html  # data, not markup
            assert 'class="land" d="M' in html

        async with running_mesh(tmp_path / "off") as mesh:
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            status, _, page = await member.call("GET", "/map")
            assert status == 404
            _, _, page = await member.call("GET", "/")
            assert b'href="/map"' not in page

    run(main())
