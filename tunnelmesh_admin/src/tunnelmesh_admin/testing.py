"""Test helpers: a coordinator with the dashboard over loopback, and peers calling it from
their mesh IPs (used by the dashboard's tests and the cross-distribution ones).

The mesh is ``127.77.0.0/16``: every peer's mesh IP is a loopback address, so a test client
can bind its socket to a peer's mesh IP and the dashboard sees exactly the source address the
tunnel would give it (in the lab test the packets really come through the tunnel).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tunnelmesh.config import Duration, ServerConfig
from tunnelmesh.control.client import ControlClient
from tunnelmesh.coordinator import CoordinatorServer
from tunnelmesh.coordinator.ca import client_ssl_context
from tunnelmesh.manager import make_plugin_manager
from tunnelmesh.testing.authz import Callers

from tunnelmesh_admin.config import AdminSection
from tunnelmesh_admin.service import SERVICE_KEY, AdminService

TOKEN = "admin-ui-token-0123456789abcdef"
MESH = "127.77.0.0/16"


__all__ = ["MESH", "TOKEN", "Browser", "Mesh", "running_mesh", "server_config"]


def server_config(
    data: Path,
    sections: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    **admin: Any,
) -> ServerConfig:
    """A coordinator config with the dashboard on ``127.0.0.1:0`` (``admin`` overrides) and
    other plugins' ``sections``; ``server``: more ServerConfig fields."""
    admin.setdefault("enabled", True)
    admin.setdefault("listen", "127.0.0.1:0")
    return ServerConfig(
        auth_token=TOKEN,
        listen="127.0.0.1:0",
        stun_listen="127.0.0.1:0",
        mesh_cidr=MESH,
        data_dir=str(data),
        heartbeat_interval=Duration(1.0),
        auth_failures_burst=100000,
        sections={**(sections or {}), "admin": AdminSection(**admin)},
        **(server or {}),
    )


@dataclass
class Browser:
    """HTTP from one source address to the dashboard, as a browser on that peer would."""

    session: aiohttp.ClientSession
    service: AdminService
    host: str = "this.tm"
    sni: str = "this.tm"

    @property
    def origin(self) -> str:
        return f"https://{self.host}:{self.service.port}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        origin: str | None = "",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)``; ``origin=""`` sends the dashboard's own origin."""
        h = {"Host": f"{self.host}:{self.service.port}", **(headers or {})}
        if origin is not None:
            h["Origin"] = origin or self.origin
        async with self.session.request(
            method,
            f"https://127.0.0.1:{self.service.port}{path}",
            json=json if data is None else None,
            data=data,
            headers=h,
            server_hostname=self.sni,
        ) as resp:
            return resp.status, dict(resp.headers), await resp.read()


@dataclass
class Mesh:
    server: CoordinatorServer
    callers: Callers
    service: AdminService
    ca_pem: str
    browsers: list[Browser]

    def browser(self, source: str) -> Browser:
        conn = aiohttp.TCPConnector(ssl=client_ssl_context(self.ca_pem), local_addr=(source, 0))
        b = Browser(aiohttp.ClientSession(connector=conn), self.service)
        self.browsers.append(b)
        return b

    def mesh_ip(self, client: ControlClient) -> str:
        assert client.registration is not None
        return client.registration.mesh_ip


@asynccontextmanager
async def running_mesh(
    tmp: Path,
    *,
    plugins: tuple[Any, ...] = (),
    sections: dict[str, Any] | None = None,
    server_fields: dict[str, Any] | None = None,
    **admin: Any,
) -> AsyncIterator[Mesh]:
    """A coordinator with the dashboard (and ``plugins``); an admin and a member registered."""
    pm = make_plugin_manager()
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"test-plugin-{i}")
    async with CoordinatorServer(
        server_config(tmp / "state", sections, server_fields, **admin), pm=pm
    ) as server:
        assert server._runner is not None
        service = server._runner.app[SERVICE_KEY]
        assert isinstance(service, AdminService)
        await asyncio.wait_for(service.listening.wait(), 20)
        callers = await Callers.create(server, TOKEN)
        mesh = Mesh(server, callers, service, callers.ca_pem, [])
        try:
            yield mesh
        finally:
            for b in mesh.browsers:
                await b.session.close()
            await callers.aclose()
