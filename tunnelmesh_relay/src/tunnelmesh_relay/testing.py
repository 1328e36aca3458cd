"""Test and benchmark helpers: a coordinator with the relay route, and registered peers.

::

    async with RelayMesh(tmp_path, ["a", "b"]) as mesh:
        a = mesh.transport("a")          # a RelayTransport with a's session, not yet listening
        mesh.hub.tap = ...               # see every message the relay forwards
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tunnelmesh.config import ServerConfig
from tunnelmesh.control.client import ControlClient, fetch_ca
from tunnelmesh.coordinator import CoordinatorServer
from tunnelmesh.identity import Identity

from tunnelmesh_relay import plugin
from tunnelmesh_relay.server import RELAY_HUB_KEY, RelayConfig, RelayHub
from tunnelmesh_relay.transport import RelayTransport

__all__ = ["TOKEN", "RelayMesh"]

TOKEN = "relay-test-token-0123456789"


class RelayMesh:
    """A coordinator on 127.0.0.1 (ephemeral ports) with only the relay plugin, and peers.

    Args:
        data_dir: where the coordinator keeps its state (a temporary directory when None).
        names: peers to register, each with a fresh identity.
        relay: the ``relay:`` config section.
        listen: the coordinator's API address.
    """

    def __init__(
        self,
        data_dir: Path | None,
        names: list[str],
        *,
        relay: RelayConfig | None = None,
        listen: str = "127.0.0.1:0",
    ) -> None:
        self._tmp: Any = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tm-relay-")
            data_dir = Path(self._tmp.name)
        self.config = ServerConfig(
            auth_token=TOKEN,
            listen=listen,
            stun_listen="127.0.0.1:0",
            data_dir=str(data_dir / "state"),
            sections={"relay": relay or RelayConfig()},
        )
        self.names = names
        self.identities = {n: Identity.generate() for n in names}
        self.sessions: dict[str, str] = {}
        self.server: CoordinatorServer | None = None
        self.ca_pem = ""

    async def __aenter__(self) -> RelayMesh:
        from tunnelmesh.manager import make_plugin_manager

        pm = make_plugin_manager(entry_points=False, builtins=False)
        pm.register(plugin, "relay")
        self.server = CoordinatorServer(self.config, pm=pm, run_join_mesh=False)
        await self.server.start()
        self.ca_pem = await fetch_ca(self.server.url, TOKEN)
        for name in self.names:
            await self.register(name)
        return self

    async def register(self, name: str) -> str:
        """Register ``name`` (again) and return its session token."""
        assert self.server is not None
        ident = self.identities.setdefault(name, Identity.generate())
        async with ControlClient(
            server=self.server.url,
            identity=ident,
            ca_pem=self.ca_pem,
            auth_token=TOKEN,
            name=name,
        ) as client:
            resp = await client.register()
        self.sessions[name] = resp.session_token
        return resp.session_token

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def hub(self) -> RelayHub:
        assert self.server is not None and self.server._runner is not None
        return self.server._runner.app[RELAY_HUB_KEY]

    def transport(self, name: str, **kwargs: Any) -> RelayTransport:
        """A relay transport for peer ``name`` (call its ``listen`` to connect)."""
        return RelayTransport(
            self.identities[name].x25519_private(),
            server=self.url,
            session_token=self.sessions[name],
            ca_pem=self.ca_pem,
            **kwargs,
        )

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await self.server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
