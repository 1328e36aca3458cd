"""What the dashboard's pages and middlewares read from its service (no import of it)."""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from aiohttp import web
from tunnelmesh.abc import CoordinatorView
from tunnelmesh.registry import AdminPanel

from tunnelmesh_admin.feed import PeerFeed
from tunnelmesh_admin.geoip import GeoLocator

__all__ = ["FEED_KEY", "PANELS_KEY", "SERVICE_KEY", "DashboardView"]


class DashboardView(Protocol):
    """The running dashboard (:class:`tunnelmesh_admin.service.AdminService` satisfies it)."""

    coordinator: CoordinatorView
    api: web.Application
    """The coordinator's own API application (every route, the excluded ones too)."""
    started: str
    port: int
    refused: Counter[str]
    geoip: GeoLocator | None

    def locations(self) -> bool: ...

    def allowed_hosts(self) -> set[str]: ...


SERVICE_KEY: web.AppKey[DashboardView] = web.AppKey("admin_service")
FEED_KEY: web.AppKey[PeerFeed] = web.AppKey("admin_feed")
PANELS_KEY: web.AppKey[dict[str, AdminPanel]] = web.AppKey("admin_panels")
"""The plugins' panels (``tunnelmesh_register_admin_panels``) whose API route exists, by slug."""
