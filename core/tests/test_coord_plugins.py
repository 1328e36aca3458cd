"""What the coordinator offers plugins: routes with the caller's peer, a lifecycle, its mesh IP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from tunnelmesh import Policy, hookimpl, route_policy
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.config import JoinMesh, ServerConfig
from tunnelmesh.control.client import ControlClient, fetch_ca
from tunnelmesh.coordinator.api import authenticated_peer
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.identity import Identity

TOKEN = "test-token-0123456789abcdef"


def config(tmp_path: Path, **kw: Any) -> ServerConfig:
    return ServerConfig(
        auth_token=TOKEN,
        listen="127.0.0.1:0",
        stun_listen="127.0.0.1:0",
        data_dir=str(tmp_path / "state"),
        **kw,
    )


class EchoPlugin:
    """A route that answers with the caller's peer name, and a service started with the app."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def tunnelmesh_register_coordinator_routes(
        self, app: web.Application, coordinator: Any
    ) -> None:
        @route_policy(Policy.PEER)
        async def whoami(request: web.Request) -> web.Response:
            rec = authenticated_peer(request)
            return web.json_response({"name": rec.name, "admin": rec.is_admin})

        async def service(app: web.Application) -> AsyncIterator[None]:
            self.events.append(f"start {len(coordinator.peers)}")
            yield
            self.events.append("stop")

        app.router.add_get("/api/v1/echo/whoami", whoami)
        app.cleanup_ctx.append(service)


def test_plugin_route_sees_the_peer_and_lives_with_the_coordinator(tmp_path: Path) -> None:
    plugin = EchoPlugin()
    pm = make_plugin_manager(entry_points=False)
    pm.register(plugin, name="echo-test")

    async def main() -> None:
        async with CoordinatorServer(config(tmp_path), pm=pm) as server:
            assert plugin.events == ["start 0"]
            ca = await fetch_ca(server.url, TOKEN)
            client = ControlClient(
                server=server.url,
                identity=Identity.generate(),
                ca_pem=ca,
                auth_token=TOKEN,
                name="alice",
            )
            reg = await client.register()
            await client.aclose()
            ssl = client_ssl_context(ca)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl)) as http:
                for token, status in ((reg.session_token, 200), ("wrong", 401), ("", 401)):
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    async with http.get(
                        server.url + "/api/v1/echo/whoami",
                        headers=headers,
                        server_hostname=COORDINATOR_NAME,
                    ) as resp:
                        assert resp.status == status
                        body = await resp.json()
                        if status == 200:
                            assert body == {"name": "alice", "admin": True}
                        else:
                            assert body["error"] == "unauthorized"
        assert plugin.events == ["start 0", "stop"]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_own_mesh_ip(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "home"))
    jm = JoinMesh(name="hub", private_key=str(tmp_path / "hub_key"))

    async def main() -> str:
        async with CoordinatorServer(config(tmp_path), run_join_mesh=False) as plain:
            assert plain.coordinator.own_mesh_ip() is None
        async with CoordinatorServer(config(tmp_path / "j", join_mesh=jm)) as server:
            ip = await asyncio.wait_for(server.coordinator.wait_own_mesh_ip(), 20)
            assert server.coordinator.own_mesh_ip() == ip
            hub = server.coordinator.peer_by_name("hub")
            assert hub is not None and hub.mesh_ip == ip
        # A restart knows it from the state store, before its own peer registers again.
        server = CoordinatorServer(config(tmp_path / "j", join_mesh=jm))  # not started
        await server.coordinator.load()
        try:
            assert server.coordinator.own_mesh_ip() == ip
            assert await asyncio.wait_for(server.coordinator.wait_own_mesh_ip(), 1) == ip
        finally:
            await server.coordinator.close()
        return ip

    assert asyncio.run(asyncio.wait_for(main(), 60)).startswith("172.30.")
