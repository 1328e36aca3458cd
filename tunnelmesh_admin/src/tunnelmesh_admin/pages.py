"""The dashboard's pages (server-rendered with Jinja2), its live feed and its static files.

Every page is complete HTML from the server (readable without JavaScript); ``static/app.js``
then keeps the peers live from ``/events`` and turns the forms into calls of the JSON API
(the coordinator's own routes, served on this listener with their policies). Members see every
page; the API's admin routes refuse members (403 from the server), and the pages show the
admin forms only to admins (a convenience: the server decides).

Templates autoescape everything: peer names, aliases and group names are data, never markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import mimetypes
import os
import time
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web
from tunnelmesh import Policy, __version__, route_policy
from tunnelmesh.control_socket import ControlError, arequest
from tunnelmesh.coordinator import ApiFailure, Coordinator, PeerRecord
from tunnelmesh.coordinator.api import COORDINATOR_KEY

from tunnelmesh_admin import worldmap
from tunnelmesh_admin.feed import RELAYED, PeerFeed, Row
from tunnelmesh_admin.security import caller_of, headers_for_stream
from tunnelmesh_admin.state import FEED_KEY, PANELS_KEY, SERVICE_KEY

__all__ = ["LAYERS", "NAV", "add_pages", "has_route", "static_files"]

LAYERS = ("coordinator", "config", "runtime", "service")
"""The packet filter's layers, in the order they are asked (docs/filter.md)."""

NAV = [
    ("overview", "/", "Overview"),
    ("peers", "/peers", "Peers"),
    ("filter", "/filter", "Packet filter"),
    ("dns", "/dns", "DNS"),
    ("groups", "/groups", "Groups & roles"),
]

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("tunnelmesh_admin", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)


def _rate(value: float) -> str:
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB/s"


def _bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"


def _ago(ts: float) -> str:
    if not ts:
        return "never"
    s = max(0.0, time.time() - ts)
    if s < 60:
        return f"{s:.0f} s ago"
    if s < 3600:
        return f"{s / 60:.0f} min ago"
    if s < 86400:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} d ago"


_env.filters["rate"] = _rate
_env.filters["bytes"] = _bytes
_env.filters["ago"] = _ago
_env.filters["clock"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def has_route(app: web.Application, path: str) -> bool:
    """Whether ``app`` serves ``path`` (a route template): the pages offer what exists."""
    return any(r.resource is not None and r.resource.canonical == path for r in app.router.routes())


def _coord(request: web.Request) -> Coordinator:
    return request.app[COORDINATOR_KEY]


def _render(request: web.Request, template: str, page: str, **ctx: Any) -> web.Response:
    service = request.app[SERVICE_KEY]
    coord = _coord(request)
    me = caller_of(request)
    html = _env.get_template(template).render(
        nav=NAV
        + ([("s3", "/s3", "Storage")] if has_route(request.app, "/s3") else [])
        + ([("map", "/map", "Map")] if service.locations() else [])
        + [
            (f"panel-{p.slug}", f"/panels/{p.slug}", p.title)
            for p in request.app[PANELS_KEY].values()
        ],
        page=page,
        me=me,
        admin=coord.is_admin(me),
        domain=coord.domain,
        version=__version__,
        **ctx,
    )
    return web.Response(text=html, content_type="text/html", charset="utf-8")


def _cert_expiry(coord: Coordinator) -> float | None:
    if coord.ca is None:
        return None
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(coord.ca.cert_pem.encode())
    return cert.not_valid_after_utc.timestamp()


def _alerts(coord: Coordinator, rows: list[Row]) -> list[tuple[str, str]]:
    """``(level, sentence)`` for what an operator should look at."""
    out: list[tuple[str, str]] = []
    for r in rows:
        if not r.online:
            out.append(("warn", f"{r.name} is offline (last seen {_ago(r.last_seen)})"))
    for r in rows:
        if r.relayed:
            out.append(("info", f"{r.name} reaches {r.relayed} peer(s) through the relay"))
    for r in rows:
        if r.exit:
            out.append(("info", f"{r.name} is an exit node"))
    expiry = _cert_expiry(coord)
    if expiry is not None:
        days = (expiry - time.time()) / 86400
        if days < 30:
            out.append(("warn", f"the mesh CA certificate expires in {days:.0f} days"))
    pending = coord.pending_peers()
    if pending:
        names = ", ".join(r.name for r in pending)
        out.append(("warn", f"waiting for approval: {names} (tunnelmesh peers approve NAME)"))
    return out


def _feed(request: web.Request) -> PeerFeed:
    feed: PeerFeed = request.app[FEED_KEY]
    return feed


@route_policy(Policy.PEER)
async def overview(request: web.Request) -> web.Response:
    coord = _coord(request)
    rows = _feed(request).rows()
    expiry = _cert_expiry(coord)
    return _render(
        request,
        "overview.html",
        "overview",
        rows=rows,
        online=sum(1 for r in rows if r.online),
        total=len(rows),
        relayed=sum(1 for r in rows if r.relayed),
        exits=[r for r in rows if r.exit],
        started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(coord.started_at)),
        uptime=_ago(coord.started_at).removesuffix(" ago"),
        ca_expires=dt.datetime.fromtimestamp(expiry, dt.UTC).strftime("%Y-%m-%d") if expiry else "",
        alerts=_alerts(coord, rows),
    )


@route_policy(Policy.PEER)
async def peers(request: web.Request) -> web.Response:
    me = caller_of(request)
    rows = _feed(request).rows()
    return _render(
        request,
        "peers.html",
        "peers",
        rows=rows,
        view=me.transports,
        rtt=me.rtt_ms,
        relayed=RELAYED,
    )


def _peer_or_404(coord: Coordinator, name: str) -> PeerRecord:
    rec = coord.peer_by_name(name)
    if rec is None or rec.pending:
        raise ApiFailure(404, "no_such_peer", f"no peer named {name!r}")
    return rec


@route_policy(Policy.PEER)
async def peer(request: web.Request) -> web.Response:
    coord = _coord(request)
    rec = _peer_or_404(coord, request.match_info["name"])
    row = next((r for r in _feed(request).rows() if r.peer_id == rec.peer_id), None)
    paths = [
        (other, transport, rec.rtt_ms.get(other), rec.reasons.get(other, ""))
        for other, transport in sorted(rec.transports.items())
    ]
    return _render(
        request,
        "peer.html",
        "peers",
        rec=rec,
        row=row,
        paths=paths,
        relayed=RELAYED,
        transport_api=has_route(request.app, "/api/v1/peers/{name}/transport"),
        traffic_api=has_route(request.app, "/api/v1/peers/{name}/traffic"),
        groups=coord.groups.of(rec.peer_id),
    )


async def _own_node_filter(coord: Coordinator) -> tuple[dict[str, Any] | None, str]:
    """The coordinator's own node's filter (``filter.list`` on its control socket: the four
    layers with their packet counters), or None and why not."""
    jm = coord.config.join_mesh
    if jm is None:
        return None, "this coordinator runs no node of its own (join_mesh)"
    try:
        found = await arequest(os.path.expanduser(jm.control_socket), "filter.list", timeout=2.0)
    except ControlError as exc:
        return None, str(exc)
    return (found if isinstance(found, dict) else None), ""


@route_policy(Policy.PEER)
async def filter_page(request: web.Request) -> web.Response:
    coord = _coord(request)
    names = {p.peer_id: p.name for p in coord.peers.values()}
    node_filter, node_error = await _own_node_filter(coord)
    per_layer: dict[str, list[int]] = {k: [0, 0, 0] for k in LAYERS}
    for rule in (node_filter or {}).get("rules", []):
        counts = per_layer.setdefault(rule["layer"], [0, 0, 0])
        counts[0] += 1
        counts[1] += rule["allowed"]
        counts[2] += rule["denied"]
    return _render(
        request,
        "filter.html",
        "filter",
        rules=coord.filters.listing(names.get),
        node_filter=node_filter,
        node_error=node_error,
        node_name=coord.config.join_mesh.name if coord.config.join_mesh else "",
        per_layer=per_layer,
        names=names,
        rules_api=has_route(request.app, "/api/v1/filter/rules"),
        peers=sorted((p for p in coord.peers.values() if not p.pending), key=lambda p: p.name),
    )


@route_policy(Policy.PEER)
async def dns_page(request: web.Request) -> web.Response:
    coord = _coord(request)
    visible = [p for p in coord.peers.values() if not p.pending]
    aliases = sorted((a, p.name, f"{a}.{coord.domain}") for p in visible for a in p.aliases)
    return _render(
        request,
        "dns.html",
        "dns",
        records=sorted(coord.dns_records(), key=lambda r: r.name),
        aliases=aliases,
    )


@route_policy(Policy.PEER)
async def groups_page(request: web.Request) -> web.Response:
    coord = _coord(request)
    names = {p.peer_id: p.name for p in coord.peers.values()}
    groups = [
        (g, sorted((names.get(pid, pid), pid) for pid in coord.groups.members(g)))
        for g in coord.groups.names()
    ]
    admins = sorted((p.name, p.peer_id) for p in coord.peers.values() if coord.is_admin(p))
    return _render(
        request,
        "groups.html",
        "groups",
        groups=groups,
        admins=admins,
        admin_entries=coord.config.admin_peers,
        peers=sorted(p.name for p in coord.peers.values() if not p.pending),
    )


@route_policy(Policy.PEER)
async def events(request: web.Request) -> web.StreamResponse:
    """The live feed (Server-Sent Events): a snapshot of the peers, then their changes."""
    feed = _feed(request)
    me = caller_of(request)
    resp = web.StreamResponse(headers=headers_for_stream())
    resp.content_type = "text/event-stream"
    await resp.prepare(request)
    sub = feed.subscribe(me.peer_id)
    try:
        await resp.write(b"retry: 1000\n\n")
        while True:
            try:
                msg = await asyncio.wait_for(sub.queue.get(), 15.0)
            except TimeoutError:
                msg = b": keep-alive\n\n"
            if not msg:  # the dashboard stops
                break
            await resp.write(msg)
    except ConnectionResetError:
        pass  # the browser went away
    finally:
        feed.unsubscribe(sub)
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


@route_policy(Policy.PEER)
async def map_page(request: web.Request) -> web.Response:
    """Peers on a world map (``locations: true``), drawn offline (see :mod:`.worldmap`).

    A peer's own ``location:`` (peer.yaml) places it; a peer without one is placed by the
    operator's GeoIP database (``admin.geoip_db``) from its first public endpoint, marked
    approximate, when there is one.
    """
    coord = _coord(request)
    if not coord.config.locations:
        raise ApiFailure(404, "not_found", "this coordinator keeps no locations (locations: true)")
    located = coord.peerstats.location
    geoip = request.app[SERVICE_KEY].geoip
    mesh = ipaddress.ip_network(coord.config.mesh_cidr, strict=False)
    places, unplaced, rows, approximate = [], [], [], set()
    for rec in sorted(coord.peers.values(), key=lambda r: r.name):
        if rec.pending:
            continue
        loc, source = located.get(rec.peer_id), "config"
        if loc is None and geoip is not None:
            loc, source = geoip.locate_endpoints(rec.endpoints, mesh), "GeoIP"
        if loc is None:
            unplaced.append(rec.name)
            continue
        if source == "GeoIP":
            approximate.add(rec.name)
        places.append((rec.name, loc.city, loc.lat, loc.lon, source))
        rows.append((rec.name, loc.city, coord.liveness.is_online(rec.peer_id), loc.lat, loc.lon))
    return _render(
        request,
        "map.html",
        "map",
        land=worldmap.land_path(),
        view_box=worldmap.view_box(),
        markers=worldmap.markers(rows),
        places=places,
        approximate=approximate,
        geoip=geoip is not None,
        unplaced=unplaced,
        total=len(places) + len(unplaced),
    )


@route_policy(Policy.PEER)
async def panel(request: web.Request) -> web.Response:
    """A plugin's panel: the frame here, the rows from its API route (as the caller)."""
    found = request.app[PANELS_KEY].get(request.match_info["slug"])
    if found is None:
        raise ApiFailure(404, "not_found", "no such panel")
    return _render(request, "panel.html", f"panel-{found.slug}", panel=found)


_STATIC: dict[str, tuple[bytes, str]] = {}


def static_files() -> dict[str, tuple[bytes, str]]:
    """Every file under ``static/`` (path -> (bytes, content type)), read once."""
    if not _STATIC:
        root = resources.files("tunnelmesh_admin") / "static"

        def walk(node: Any, prefix: str) -> None:
            for child in node.iterdir():
                rel = f"{prefix}{child.name}"
                if child.is_dir():
                    walk(child, rel + "/")
                elif not child.name.startswith("."):
                    kind = mimetypes.guess_type(child.name)[0] or "application/octet-stream"
                    if kind.startswith("text/") or kind == "application/javascript":
                        kind += "; charset=utf-8"
                    _STATIC[rel] = (child.read_bytes(), kind)

        walk(root, "")
    return _STATIC


@route_policy(Policy.PEER)
async def static(request: web.Request) -> web.Response:
    found = static_files().get(request.match_info["path"])
    if found is None:
        raise ApiFailure(404, "not_found", "no such file")
    body, kind = found
    resp = web.Response(body=body, headers={"Content-Type": kind})
    resp.headers["Cache-Control"] = "max-age=300"
    return resp


def add_pages(app: web.Application) -> None:
    r = app.router
    r.add_get("/", overview)
    r.add_get("/peers", peers)
    r.add_get("/peers/{name}", peer)
    r.add_get("/filter", filter_page)
    r.add_get("/dns", dns_page)
    r.add_get("/groups", groups_page)
    r.add_get("/events", events)
    r.add_get("/panels/{slug}", panel)
    r.add_get("/map", map_page)
    r.add_get("/static/{path:.+}", static)
