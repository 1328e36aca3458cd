"""The dashboard's middlewares: who is calling, from where, and what the browser may do.

They run before core's API middlewares (errors as JSON, then each route's declared policy):

1. :func:`headers <security_middlewares>`: every answer, errors too, carries
   ``Content-Security-Policy: default-src 'self'`` with no inline script, no eval and
   ``frame-ancestors 'none'``, HSTS, ``nosniff``, ``no-referrer`` and a same-origin opener and
   resource policy; pages are ``no-store``.
2. the caller: the request's source address must be the mesh IP of a registered, approved
   peer; that peer (its record, keyed by peer ID, never by name) becomes the caller the route
   policies check (:func:`tunnelmesh.coordinator.api.vouch_caller`). Anything else gets 403
   ``not_a_mesh_peer`` and nothing runs. The ``Host`` must be one of the dashboard's names or
   addresses (421 otherwise: a DNS-rebound name never reaches a handler).
3. same origin: a request that can change state (anything but GET/HEAD/OPTIONS) needs
   ``Sec-Fetch-Site: same-origin`` when the browser sends it, and always an ``Origin`` equal to
   the dashboard's own origin; a form posted from another site gets 403 ``cross_origin``. A
   script sends ``Origin: https://this.tm`` (the CLI uses the API port with its session token).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from tunnelmesh.coordinator import PeerRecord
from tunnelmesh.coordinator.api import vouch_caller

from tunnelmesh_admin.state import DashboardView

__all__ = ["CSP", "caller_of", "headers_for_stream", "security_middlewares"]

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CALLER: web.RequestKey[PeerRecord] = web.RequestKey("admin_caller", PeerRecord)


def _refusal(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message, "status": status}, status=status)


def headers_for_stream() -> dict[str, str]:
    """The security headers of a streamed answer (set before it is prepared)."""
    return {**_HEADERS, "Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def caller_of(request: web.Request) -> PeerRecord:
    """The peer calling the dashboard (set by the caller middleware before any handler)."""
    return request[_CALLER]


def _peer_at(service: DashboardView, source: str) -> PeerRecord | None:
    try:
        ip = str(ipaddress.ip_address(source.split("%", 1)[0]))
    except ValueError:
        return None
    for rec in service.coordinator.peers.values():
        if rec.mesh_ip == ip:
            return None if rec.pending else rec
    return None


def _host_allowed(service: DashboardView, host: str) -> bool:
    try:
        parts = urlsplit(f"//{host}")
        hostname, port = parts.hostname or "", parts.port
    except ValueError:
        return False
    if port is not None and port != service.port:
        return False
    return hostname in service.allowed_hosts()


def security_middlewares(service: DashboardView) -> list[Any]:
    """The dashboard's middlewares, outermost first (see the module docstring)."""

    @web.middleware
    async def headers(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(_HEADERS)
            raise
        if not resp.prepared:  # a stream (the live feed) set its headers itself
            resp.headers.update(_HEADERS)
            resp.headers.setdefault("Cache-Control", "no-store")
            # the server's time for this answer (browser dev tools show it; the bench reads it)
            resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        return resp

    @web.middleware
    async def caller(request: web.Request, handler: Any) -> web.StreamResponse:
        rec = _peer_at(service, request.remote or "")
        if rec is None:
            service.refused["not_a_mesh_peer"] += 1
            return _refusal(
                403,
                "not_a_mesh_peer",
                "the dashboard answers mesh peers only: open it through the mesh "
                "(https://this.tm/ from a joined peer)",
            )
        if not _host_allowed(service, request.host):
            service.refused["bad_host"] += 1
            return _refusal(421, "misdirected", f"this server does not serve {request.host!r}")
        request[_CALLER] = rec
        vouch_caller(request, rec)
        return await handler(request)  # type: ignore[no-any-return]

    @web.middleware
    async def same_origin(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method not in SAFE_METHODS:
            site = request.headers.get("Sec-Fetch-Site")
            origin = request.headers.get("Origin", "")
            if (site is not None and site != "same-origin") or origin != f"https://{request.host}":
                service.refused["cross_origin"] += 1
                return _refusal(
                    403,
                    "cross_origin",
                    "a request that changes something must come from the dashboard's own "
                    "origin (Origin / Sec-Fetch-Site)",
                )
        return await handler(request)  # type: ignore[no-any-return]

    return [headers, caller, same_origin]
