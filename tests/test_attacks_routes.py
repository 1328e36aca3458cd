"""Every route of a coordinator with every installed plugin declares a policy that holds.

The core attack suite (core/tests/test_attacks_authz.py) walks core's routes; this one builds
the coordinator the way ``tunnelmesh serve`` does, with the plugins installed here (S3 enabled
so its routes exist, the relay on by default) and calls each route as a stranger, a holder of
the mesh join token, an ordinary peer, the peer a route names and an admin.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tunnelmesh import Policy
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.config import load_server_config
from tunnelmesh.coordinator.api import build_app, route_table
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.testing.authz import Callers, check_route_policies

TOKEN = "routes-token-0123456789abcdef"


def test_every_installed_route_declares_a_policy_that_holds(tmp_path: Path) -> None:
    pm = make_plugin_manager()
    registry = pm.build_registry()
    s3 = "s3:\n  enabled: true\n  listen: 127.0.0.1:0\n" if "s3" in registry.config_sections else ""
    path = tmp_path / "server.yaml"
    path.write_text(
        f'auth_token: "{TOKEN}"\nlisten: 127.0.0.1:0\nstun_listen: 127.0.0.1:0\n'
        f"data_dir: {tmp_path / 'state'}\nauth_failures_burst: 100000\n{s3}"
    )
    cfg = load_server_config(str(path), registry.config_sections)

    async def main() -> None:
        async with CoordinatorServer(cfg, pm=pm) as server:
            table = route_table(build_app(server.coordinator, pm))
            paths = {p for _, p, _ in table}
            if "s3" in registry.config_sections:
                assert ("DELETE", "/api/v1/s3/credentials/{name}", Policy.SELF_OR_ADMIN) in table
            if "relay" in registry.config_sections:
                assert ("GET", "/api/v1/relay/stats", Policy.ADMIN) in table
            assert "/api/v1/register" in paths
            callers = await Callers.create(server, TOKEN)
            try:
                checked = await check_route_policies(server, callers, table)
            finally:
                await callers.aclose()
            assert {(m, p) for m, p, _ in checked} == {(m, p) for m, p, _ in table if m != "HEAD"}

    asyncio.run(asyncio.wait_for(main(), 120))
