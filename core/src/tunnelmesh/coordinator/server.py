"""Running a coordinator: the HTTPS API, the STUN port and (optionally) its own mesh peer.

::

    async with CoordinatorServer(config) as server:
        print(server.url, server.stun_port)
        await server.wait_closed()      # or serve until a signal

Server-as-client: with a ``join_mesh:`` section the coordinator registers its own peer (a key
of its own, ``join_mesh.private_key``) with itself, so it gets a mesh IP and ``this.<domain>``
/ ``this.tm`` name it. With ``node=True`` (what ``tunnelmesh serve`` does when a transport
plugin is installed and it may create a TUN device) that peer is a full
:class:`~tunnelmesh.node.Node` in the same process and event loop, exactly what
``tunnelmesh join`` runs: TUN with the mesh IP, transports, filter, DNS, exit settings, all
taken from ``join_mesh`` (which has every key of a peer config). Otherwise it is a control
client only (heartbeats, no data plane).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from tunnelmesh.config import ServerConfig
from tunnelmesh.control.contexts import join_mesh_key_path
from tunnelmesh.control.urls import (
    DEFAULT_API_PORT,
    DEFAULT_STUN_PORT,
    join_hostport,
    split_hostport,
)
from tunnelmesh.coordinator.api import build_app
from tunnelmesh.coordinator.core import Coordinator
from tunnelmesh.coordinator.meshlisten import load_cert_pem
from tunnelmesh.coordinator.store import StateStore
from tunnelmesh.coordinator.stun_server import StunServer, start_stun_server
from tunnelmesh.errors import ConfigError, TunnelmeshError
from tunnelmesh.hostaddrs import local_addresses
from tunnelmesh.private_files import private_umask

__all__ = ["CoordinatorServer", "local_addresses"]

log = logging.getLogger(__name__)


class CoordinatorServer:
    """A coordinator serving HTTPS and STUN.

    Args:
        config: the server config; ``listen``/``stun_listen`` may use port 0 (tests).
        pm: the plugin manager (route hook); None skips plugins.
        store: a state store instead of SQLite in ``data_dir``.
        run_join_mesh: also run the ``join_mesh:`` peer in this process.
        node: run that peer as a full mesh node (TUN, transports; needs root) rather than a
            control client only.
        notify: called with the node's progress lines (default: logged).
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        pm: Any = None,
        store: StateStore | None = None,
        run_join_mesh: bool = True,
        node: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.pm = pm
        self.run_join_mesh = run_join_mesh and config.join_mesh is not None
        self.run_node = node and self.run_join_mesh
        self.notify = notify or (lambda line: log.info("%s", line))
        self.node: Any = None
        """The coordinator's own mesh node (``node=True``), once it runs."""
        self.own_peer_ready: asyncio.Future[str] | None = None
        """Resolves with a line once the own peer registered (and its node is up), or fails."""
        self._join_identity = None
        self._join_key_path: Path | None = None
        keys: set[str] = set()
        if self.run_join_mesh:
            from tunnelmesh.identity import Identity

            assert config.join_mesh is not None
            self._join_key_path = join_mesh_key_path(config.join_mesh.private_key)
            self._join_identity, _ = Identity.load_or_create(self._join_key_path)
            keys.add(self._join_identity.public_openssh)
        self.coordinator = Coordinator(config, store=store, pm=pm, coordinator_keys=keys)
        self._runner: web.AppRunner | None = None
        self._stun: StunServer | None = None
        self._ssl: ssl.SSLContext | None = None
        self.api_port = 0
        self.stun_port = 0
        self._host = ""
        self._peer_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    @property
    def url(self) -> str:
        """A URL that reaches this server from this host."""
        host = self._host if self._host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"https://{join_hostport(host, self.api_port)}"

    @property
    def wildcard(self) -> bool:
        """Whether the API listens on every address of the host (``0.0.0.0`` / ``::``)."""
        return self._host in ("0.0.0.0", "::", "")

    def bound(self) -> tuple[str, str]:
        """What the API and STUN sockets are bound to, ``host:port`` each."""
        stun_host, _ = split_hostport(self.config.stun_listen, DEFAULT_STUN_PORT)
        return (
            join_hostport(self._host or "0.0.0.0", self.api_port),
            join_hostport(stun_host or "0.0.0.0", self.stun_port),
        )

    def peer_urls(self) -> list[str]:
        """The URLs peers should use: the bound address, or on a wildcard listen every
        address of this host outside loopback and the mesh (loopback when there is none)."""
        if not self.wildcard:
            return [self.url]
        mesh = ipaddress.ip_network(self.config.mesh_cidr, strict=False)
        hosts = [
            a
            for a in local_addresses()
            if not ipaddress.ip_address(a).is_loopback and ipaddress.ip_address(a) not in mesh
        ]
        return [f"https://{join_hostport(h, self.api_port)}" for h in hosts] or [self.url]

    def _cert_names(self) -> tuple[list[str], list[str]]:
        names = ["localhost", socket.gethostname(), *self.config.tls_names]
        ips = local_addresses()
        if self._host not in ("0.0.0.0", "::", ""):
            ips.append(self._host)
        return [n for n in names if n], ips

    @staticmethod
    def _shrink_tls_buffers() -> None:
        # asyncio's TLS protocol gives every connection a 256 KiB read buffer, written at
        # allocation, so 2,000 idle peer connections cost 500 MiB of RSS. Control messages are
        # small (bodies are capped at 64 KiB); 16 KiB reads lose nothing here.
        try:
            from asyncio import sslproto

            if getattr(sslproto.SSLProtocol, "max_size", 0) > 16 * 1024:
                sslproto.SSLProtocol.max_size = 16 * 1024
        except (ImportError, AttributeError):  # pragma: no cover - other event loops
            pass

    async def start(self) -> None:
        """Load state, bind the API and STUN ports, start background work.

        Raises:
            ConfigError: a port cannot be bound, or the data dir or home is open to other users.
            StateStoreError: the state store cannot be opened.
        """
        coord = self.coordinator
        self._shrink_tls_buffers()
        if self.run_join_mesh:
            # The own peer's context (session token) is written there.
            from tunnelmesh.identity import tunnelmesh_home
            from tunnelmesh.private_files import ensure_private_dir

            ensure_private_dir(tunnelmesh_home(), "the tunnelmesh home (TUNNELMESH_HOME)")
        await coord.load()
        host, port = split_hostport(self.config.listen, DEFAULT_API_PORT)
        self._host = host
        cert = coord.reissue_server_cert(*self._cert_names())
        self._ssl = cert.ssl_context()
        self._write_ca_file()
        app = build_app(coord, self.pm)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, host, port, ssl_context=self._ssl, backlog=1024, reuse_address=True
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"cannot listen on {self.config.listen}: {exc.strerror}", key="listen"
            ) from None
        server = site._server  # the asyncio.Server, to learn the port when 0 was asked for
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.api_port = int(sockets[0].getsockname()[1])
        stun_host, stun_port = split_hostport(self.config.stun_listen, DEFAULT_STUN_PORT)
        try:
            self._stun = await start_stun_server(stun_host, stun_port)
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"cannot listen on {self.config.stun_listen}: {exc.strerror}", key="stun_listen"
            ) from None
        self.stun_port = self._stun.port
        coord.stun_port = self.stun_port
        coord.start_background()
        api_bound, stun_bound = self.bound()
        log.info(
            "coordinator API on https://%s, STUN on udp %s, %d peers",
            api_bound,
            stun_bound,
            len(coord.peers),
        )
        if self.run_join_mesh:
            loop = asyncio.get_running_loop()
            self.own_peer_ready = loop.create_future()
            self._peer_task = loop.create_task(self._run_own_peer())

    def reload(self, config: ServerConfig) -> list[str]:
        """Apply a re-read server config; return what changed (for a log line).

        What may change at run time: ``filter`` (its rules are pushed to every peer at once)
        and ``admin_peers`` (an entry removed demotes that peer at once). Everything else
        (listen addresses, mesh CIDR, data dir, ...) needs a restart.
        """
        changed = []
        if self.coordinator.set_filter(config.filter):
            changed.append(f"filter rules ({len(config.filter.rules)}, pushed to every peer)")
        admins = self.coordinator.apply_config(config)
        if admins:
            changed.append(f"admin flag of {', '.join(admins)}")
        self.config = msgspec.structs.replace(
            self.config, filter=config.filter, admin_peers=config.admin_peers
        )
        return changed

    def _write_ca_file(self) -> None:
        assert self.coordinator.ca is not None
        path = self.coordinator.data_dir / "ca.crt"
        with contextlib.suppress(OSError):
            path.write_text(self.coordinator.ca.cert_pem, encoding="ascii")

    async def _run_own_peer(self) -> None:
        """Server-as-client: this coordinator also joins its own mesh."""
        from tunnelmesh.control.client import ControlClient

        cfg = self.config.join_mesh
        assert cfg is not None and self._join_identity is not None and self.coordinator.ca
        client = ControlClient(
            server=self.url,
            identity=self._join_identity,
            ca_pem=self.coordinator.ca.cert_pem,
            auth_token=self.coordinator.auth_token,
            name=cfg.name or socket.gethostname().split(".")[0].lower(),
        )
        ready = self.own_peer_ready
        try:
            resp = await client.register()
            log.info("this coordinator joined its mesh as %s at %s", resp.name, resp.mesh_ip)
            ctx = self._write_own_context(resp)
            # The certificate now also names this.<domain> and the coordinator's mesh IP.
            cert = self.coordinator.reissue_server_cert(*self._cert_names())
            if self._ssl is not None:
                load_cert_pem(self._ssl, cert.cert_pem, cert.key_pem)
            line = f"mesh peer {resp.name}: mesh IP {resp.mesh_ip}"
            if self.run_node:
                await client.aclose()
                if ctx is None:
                    raise TunnelmeshError("cannot write the context of the coordinator's peer")
                await self._run_own_node(ctx, resp, ready, line)
                return
            if ready is not None and not ready.done():
                ready.set_result(line + " (control plane only)")
            await client.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if ready is not None and not ready.done():
                log.warning("the coordinator's own mesh peer failed: %s", exc)
                ready.set_exception(exc)
            else:
                log.exception("the coordinator's own mesh peer stopped")
        finally:
            await client.aclose()

    async def _run_own_node(
        self, ctx: Any, resp: Any, ready: asyncio.Future[str] | None, line: str
    ) -> None:
        """The own peer as a full node, as `tunnelmesh join` runs it."""
        import msgspec

        from tunnelmesh.config import PeerConfig
        from tunnelmesh.control.contexts import ContextStore
        from tunnelmesh.node import Node

        jm = self.config.join_mesh
        assert jm is not None and self._join_identity is not None
        fields = {f: getattr(jm, f) for f in jm.__struct_fields__}
        cfg = PeerConfig(**fields, server=self.url, auth_token=self.coordinator.auth_token)
        cfg = msgspec.structs.replace(cfg, name=resp.name)
        # Its STUN query would go to this very host: nothing to learn, so none.
        node_ctx = msgspec.structs.replace(ctx, stun_port=0)
        node = Node(
            cfg,
            context=node_ctx,
            store=ContextStore(),
            identity=self._join_identity,
            pm=self.pm,
            notify=self.notify,
            coordinator=True,
        )
        node.client.registration = resp
        self.node = node
        try:
            await node.start()
            if ready is not None and not ready.done():
                ready.set_result(line + f" (node up on {cfg.tun.name})")
            await node.run()
        finally:
            self.node = None
            await node.aclose()

    def _write_own_context(self, resp: Any) -> Any:
        """A context for the coordinator's own peer, so `tunnelmesh status`/`peers` work here.

        Returns:
            The context, or None when it could not be written.
        """
        from tunnelmesh.control.contexts import Context, ContextStore

        assert self.coordinator.ca is not None and self._join_identity is not None
        try:
            store = ContextStore()
            ctx_dir = store.context_dir(resp.name)
            with private_umask():  # contexts/ too (parents=True made it 0755)
                ctx_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            ca_path = ctx_dir / "ca.crt"
            ca_path.write_text(self.coordinator.ca.cert_pem, encoding="ascii")
            assert self.config.join_mesh is not None
            ctx = Context(
                name=resp.name,
                server=self.url,
                peer_name=resp.name,
                peer_id=resp.peer_id,
                mesh_ip=resp.mesh_ip,
                mesh_cidr=resp.mesh_cidr,
                domain=resp.domain,
                session_token=resp.session_token,
                ca_path=str(ca_path),
                key_path=str(self._join_key_path),
                is_admin=resp.is_admin,
                stun_port=resp.stun_port,
            )
            store.put(ctx, activate=False)
        except (OSError, TunnelmeshError) as exc:
            log.warning("cannot write the coordinator's own context: %s", exc)
            return None
        return ctx

    async def stop(self) -> None:
        if self._peer_task is not None:
            self._peer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._peer_task
            self._peer_task = None
        if self._stun is not None:
            self._stun.close()
            self._stun = None
        await self.coordinator.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.coordinator.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> CoordinatorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
