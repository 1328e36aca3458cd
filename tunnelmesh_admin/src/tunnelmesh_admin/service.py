"""The dashboard's HTTPS listener on the coordinator's mesh IP.

With ``admin: {enabled: true}`` in server.yaml, :func:`install` (called from the
``tunnelmesh_register_coordinator_routes`` hook) adds an :class:`AdminService` that lives as long
as the coordinator. It adds no route to the coordinator's public API: the dashboard has its own
aiohttp application, bound only to the coordinator's own mesh IP (``join_mesh``) on
``admin.port`` (443), with a mesh-CA certificate for ``this.tm``, ``this.tunnelmesh``,
``this.<domain>`` and the mesh IP. Without ``join_mesh`` the coordinator says at start that the
dashboard needs it, and serves no dashboard.

Who calls: the peer whose mesh IP the request comes from. The tunnel authenticated that source
(a packet reaches the coordinator's node only through the peer's WireGuard session, and the
forwarder drops packets whose source is not the sending peer's mesh IP), so there are no
passwords, API keys or tokens, and nothing secret in the browser. A source that is no registered,
approved peer's mesh IP is refused (403) before anything else runs; see :mod:`.security`.

What it serves:

* the coordinator's JSON API (the same handlers the CLI calls, copied from the built coordinator
  application when it starts, so every core and plugin route appears with its declared policy,
  checked by core's own policy middleware against the caller); routes of the node protocol
  (register, heartbeat, rendezvous, push, relay) and routes that hand out secrets (the join
  token, S3 credentials) are left out;
* the pages (:mod:`.pages`), the live feed (:mod:`.feed`) and the static files, each with a
  declared policy too (members see; the API's admin routes change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from typing import Any

from aiohttp import web
from tunnelmesh.abc import CoordinatorView
from tunnelmesh.control.urls import join_hostport, split_hostport
from tunnelmesh.coordinator.api import API_MIDDLEWARES, route_table
from tunnelmesh.coordinator.meshlisten import (
    load_cert_pem,
    serve_with_app,
    start_tls_site,
    stop_site,
)
from tunnelmesh.errors import ConfigError
from tunnelmesh.registry import AdminPanel

from tunnelmesh_admin.config import AdminSection
from tunnelmesh_admin.geoip import GeoLocator, open_geoip
from tunnelmesh_admin.state import FEED_KEY, PANELS_KEY, SERVICE_KEY

__all__ = ["EXCLUDED_ROUTES", "SERVICE_KEY", "AdminService", "install"]

log = logging.getLogger(__name__)


EXCLUDED_ROUTES = frozenset(
    {
        # the node protocol: a browser is no node
        ("POST", "/api/v1/register/challenge"),
        ("POST", "/api/v1/register"),
        ("POST", "/api/v1/heartbeat"),
        ("POST", "/api/v1/rendezvous"),
        ("GET", "/api/v1/push"),
        ("GET", "/api/v1/relay"),
        ("GET", "/api/v1/ca"),
        # secrets never reach a browser
        ("POST", "/api/v1/token/rotate"),
        ("POST", "/api/v1/s3/credentials"),
    }
)
"""Coordinator routes the dashboard does not serve (the CLI keeps them on the API port)."""


class AdminService:
    """The dashboard of one coordinator: its application and its HTTPS listener.

    Args:
        api: the coordinator's API application (its routes are served to the dashboard).
        coordinator: the coordinator.
        section: the ``admin:`` config section.
    """

    def __init__(
        self, api: web.Application, coordinator: CoordinatorView, section: AdminSection
    ) -> None:
        self.api = api
        self.coordinator = coordinator
        self.section = section
        self.host = ""
        self.port = 0
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._ssl: ssl.SSLContext | None = None
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        self.started = ""
        """When the dashboard (and so the coordinator) started, UTC, for the overview."""
        self.refused: Counter[str] = Counter()
        """Requests refused by the dashboard's own checks, by reason (not_a_mesh_peer, ...)."""
        self.geoip: GeoLocator | None = None
        """The operator's GeoIP database (``admin.geoip_db`` with ``locations: true``)."""

    @property
    def url(self) -> str:
        """``https://IP:PORT`` of the listener ("" before it listens)."""
        if not self.listening.is_set():
            return ""
        return f"https://{join_hostport(self.host, self.port)}"

    def api_routes(self) -> list[tuple[str, str, Any]]:
        """``(method, path, handler)`` of the coordinator routes the dashboard serves."""
        out = []
        for route in self.api.router.routes():
            path = route.resource.canonical if route.resource is not None else ""
            if route.method == "HEAD" or not path or (route.method, path) in EXCLUDED_ROUTES:
                continue
            out.append((route.method, path, route.handler))
        return out

    def build_app(self) -> web.Application:
        """The dashboard's application: security middlewares, the API's routes, the pages."""
        from tunnelmesh_admin.feed import PeerFeed
        from tunnelmesh_admin.pages import add_pages
        from tunnelmesh_admin.s3pages import add_s3_pages
        from tunnelmesh_admin.security import security_middlewares

        app = web.Application(
            middlewares=[*security_middlewares(self), *API_MIDDLEWARES],
            client_max_size=self.api._client_max_size,
        )
        for key, value in self.api.items():  # the coordinator (COORDINATOR_KEY), plugin state
            app[key] = value
        app[SERVICE_KEY] = self
        for method, path, handler in self.api_routes():
            app.router.add_route(method, path, handler)
        feed = PeerFeed(self.coordinator)
        app[FEED_KEY] = feed
        app[PANELS_KEY] = self.panels(app)
        add_pages(app)
        add_s3_pages(app, self.api)
        missing = [f"{m} {p}" for m, p, policy in route_table(app) if policy is None]
        if missing:  # every route declares who may call it, the dashboard's own too
            raise ConfigError(f"admin: route(s) without an access policy: {', '.join(missing)}")

        async def stop_feed(app: web.Application) -> None:
            await feed.aclose()

        app.on_shutdown.append(stop_feed)
        return app

    def panels(self, app: web.Application) -> dict[str, AdminPanel]:
        """The plugins' panels whose API route the dashboard serves (others are logged)."""
        from tunnelmesh_admin.pages import has_route

        pm = self.coordinator.pm
        found: dict[str, AdminPanel] = pm.build_registry("admin_panels").admin_panels if pm else {}
        out = {}
        for slug, panel in sorted(found.items()):
            if has_route(app, panel.api):
                out[slug] = panel
            else:
                log.warning("admin: panel %s: no GET route %s on the coordinator", slug, panel.api)
        return out

    def open_geoip(self) -> GeoLocator | None:
        """The GeoIP database when ``admin.geoip_db`` is set and ``locations: true`` (one
        warning, and None, when it cannot be used or locations are off)."""
        path = self.section.geoip_db
        if not path:
            return None
        if not self.coordinator.config.locations:
            log.warning(
                "admin: geoip_db %s is not used: the coordinator keeps no locations "
                "(locations: true in server.yaml)",
                path,
            )
            return None
        found = open_geoip(path)
        if found is not None:
            log.info("admin: the map places peers without a location: by %s (GeoIP)", path)
        return found

    def locations(self) -> bool:
        """Whether the coordinator shares peer locations (``locations: true``): the map page."""
        return self.coordinator.config.locations

    def names(self) -> list[str]:
        """The DNS names the certificate and the same-origin check accept."""
        domain = self.coordinator.domain
        return list(dict.fromkeys([f"this.{domain}", "this.tunnelmesh", "this.tm"]))

    def allowed_hosts(self) -> set[str]:
        """Host names and addresses a request's ``Host`` (and ``Origin``) may name."""
        hosts = set(self.names())
        if self.host not in ("0.0.0.0", "::", ""):
            hosts.add(self.host)
        own = self.coordinator.own_mesh_ip()
        if own:
            hosts.add(own)
        return hosts

    def _issue_cert(self) -> tuple[bytes, bytes]:
        coord = self.coordinator
        assert coord.ca is not None
        ips = []
        if self.host not in ("0.0.0.0", "::", ""):
            ips.append(self.host)
        own = coord.own_mesh_ip()
        if own and own not in ips:
            ips.append(own)
        cert = coord.ca.issue_server_cert(self.names(), ips)
        return cert.cert_pem, cert.key_pem

    async def start(self) -> None:
        """Build the application and listen (at once with ``admin.listen``, else on the mesh IP
        once the coordinator's own peer has one).

        Raises:
            ConfigError: ``admin.listen`` cannot be bound, or is the coordinator's API address.
        """
        self.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        self.geoip = self.open_geoip()
        self.app = self.build_app()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.section.listen:
            host, port = split_hostport(self.section.listen, self.section.port)
            if (host, port) == split_hostport(self.coordinator.config.listen, 8443) and port:
                raise ConfigError(
                    "admin.listen is the coordinator's public API address; the dashboard is "
                    "served on the mesh IP only",
                    key="admin.listen",
                )
            await self._listen(host, port, freebind=False)
        else:
            self._task = asyncio.get_running_loop().create_task(self._listen_on_mesh_ip())

    async def _listen(self, host: str, port: int, *, freebind: bool) -> None:
        assert self._runner is not None and self._ssl is not None
        self.host = host
        load_cert_pem(self._ssl, *self._issue_cert())
        self.port = await start_tls_site(
            self._runner, host, port, self._ssl, freebind=freebind, what="admin", key="admin.listen"
        )
        self.listening.set()
        names = self.names()
        log.info(
            "admin: dashboard on %s (https://%s/ from a peer that trusts the mesh CA)",
            self.url,
            names[-1],
        )

    async def _listen_on_mesh_ip(self) -> None:
        ip = await self.coordinator.wait_own_mesh_ip()
        try:
            await self._listen(ip, self.section.port, freebind=True)
        except ConfigError as exc:
            log.error("%s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._runner is not None:
            await stop_site(self._runner)  # an SSE stream or a half-closed TLS connection too
            self._runner = None
        self.listening.clear()
        if self.geoip is not None:
            self.geoip.close()
            self.geoip = None


def install(app: web.Application, coordinator: CoordinatorView) -> AdminService | None:
    """Add the dashboard service to a coordinator's app when ``admin.enabled``.

    Without ``join_mesh`` (and no ``admin.listen``) the dashboard has no address: the
    coordinator says so at start and serves no dashboard.
    """
    section = coordinator.config.sections.get("admin")
    if not isinstance(section, AdminSection) or not section.enabled:
        return None
    if not section.listen and coordinator.config.join_mesh is None:
        log.warning(
            "admin: the dashboard needs join_mesh (it is served on the coordinator's own mesh "
            "IP, https://this.tm/); add a join_mesh: section to server.yaml. No dashboard now."
        )
        return None
    service = AdminService(app, coordinator, section)
    app[SERVICE_KEY] = service
    serve_with_app(app, service)
    return service
