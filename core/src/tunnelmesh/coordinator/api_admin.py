"""The coordinator's run-time controls (the dashboard's and the CLI's API): handlers over
:class:`~tunnelmesh.coordinator.core.Coordinator`'s books.

Routes (JSON; errors as in :mod:`tunnelmesh.coordinator.api`; policy as declared)::

    GET    /api/v1/filter/rules                        peer    the coordinator layer, by origin
    POST   /api/v1/filter/rules                        admin   add an API rule (optional ttl)
    DELETE /api/v1/filter/rules/{protocol}/{port}      admin   ?source_peer=ID|NAME
    GET    /api/v1/peers/{name}/transport              peer    the order set and in force
    PUT    /api/v1/peers/{name}/transport              self-or-admin  {"order": [...]} | {"force": t}
    DELETE /api/v1/peers/{name}/transport              self-or-admin  back to the node's own order
    GET    /api/v1/status                              peer    the mesh at a glance, one row per peer
    GET    /api/v1/peers/{name}/traffic                peer    ?span=hour|day: rx/tx rates over time

Members see; admins change. A bad request is a 400 that says what is wrong, is counted in
``coordinator.stats["bad_requests"]`` and changes nothing.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from tunnelmesh import __version__
from tunnelmesh.control.messages import Location
from tunnelmesh.coordinator.apibase import (
    COORDINATOR_KEY,
    authenticated_peer,
    json_answer,
    read_body,
)
from tunnelmesh.coordinator.core import STORE_RETRY_AFTER, ApiFailure, Coordinator
from tunnelmesh.coordinator.filterbook import FilterBookError
from tunnelmesh.coordinator.store import PeerRecord
from tunnelmesh.coordinator.transportbook import TransportBookError
from tunnelmesh.policy import Policy, route_policy

__all__ = ["add_admin_routes"]


def _failure(exc: FilterBookError | TransportBookError) -> ApiFailure:
    # 503: the state store did not take the change; like every write refused for that, the
    # answer says when to try again
    retry = STORE_RETRY_AFTER if exc.status == 503 else 0.0
    return ApiFailure(exc.status, exc.error, exc.message, retry)


def _peer(coord: Coordinator, name: str) -> PeerRecord:
    rec = coord.peer_by_name(name)
    if rec is None or rec.pending:
        raise ApiFailure(404, "no_such_peer", f"no peer named {name!r}")
    return rec


def _name_of(coord: Coordinator, peer_id: str) -> str | None:
    rec = coord.peers.get(peer_id)
    return rec.name if rec is not None else None


# --- coordinator filter rules ------------------------------------------------------------------


class _RuleAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    port: int
    protocol: str = "tcp"
    action: str = "allow"
    source_peer: str = ""
    ttl: float = 0.0


_rule_add_dec = msgspec.json.Decoder(_RuleAdd)


@route_policy(Policy.PEER)
async def list_filter_rules(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    rules = coord.filters.listing(lambda pid: _name_of(coord, pid))
    return json_answer({"rules": rules, "pushed": len(coord.filters.rules())})


@route_policy(Policy.ADMIN)
async def add_filter_rule(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    caller = authenticated_peer(request)
    req = await read_body(request, _rule_add_dec)
    source = coord.resolve_peer(req.source_peer) if req.source_peer else ""
    try:
        rule = await coord.filters.add(
            port=req.port,
            protocol=req.protocol,
            action=req.action,
            source_peer=source,
            ttl=req.ttl,
            by=caller.peer_id,
        )
    except FilterBookError as exc:
        raise _failure(exc) from None
    view = next(
        v
        for v in coord.filters.listing(lambda pid: _name_of(coord, pid))
        if v.origin == "api" and (v.protocol, v.port, v.source_peer) == rule.key
    )
    return json_answer(view, status=201)


@route_policy(Policy.ADMIN)
async def remove_filter_rule(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    protocol = request.match_info["protocol"]
    try:
        port = int(request.match_info["port"])
    except ValueError:
        raise ApiFailure(400, "malformed", "port must be a number") from None
    if protocol not in ("tcp", "udp"):
        raise ApiFailure(400, "malformed", f"protocol must be tcp or udp, got {protocol!r}")
    who = request.query.get("source_peer", "")
    source = coord.resolve_peer(who, known_only=False) if who else ""
    try:
        rule = await coord.filters.remove(protocol, port, source)
    except FilterBookError as exc:
        raise _failure(exc) from None
    return json_answer({"status": "ok", "removed": rule})


# --- transport controls ------------------------------------------------------------------------


class _TransportSet(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    order: list[str] | None = None
    force: str | None = None


_transport_set_dec = msgspec.json.Decoder(_TransportSet)


def _transport_state(coord: Coordinator, rec: PeerRecord) -> dict[str, object]:
    setting = coord.transport_orders.get(rec.peer_id)
    return {
        "name": rec.name,
        "peer_id": rec.peer_id,
        "order": setting.order if setting else [],
        "set_by": setting.set_by if setting else "",
        "set_at": setting.set_at if setting else 0.0,
        "effective_order": coord.peerstats.transport_order.get(rec.peer_id, []),
        "transports": rec.transports,
        "connected": coord.hub.is_connected(rec.peer_id),
    }


@route_policy(Policy.PEER)
async def get_transport(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    return json_answer(_transport_state(coord, _peer(coord, request.match_info["name"])))


@route_policy(Policy.SELF_OR_ADMIN)
async def set_transport(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    caller = authenticated_peer(request)
    rec = _peer(coord, request.match_info["name"])
    req = await read_body(request, _transport_set_dec)
    if (req.order is None) == (req.force is None):
        raise ApiFailure(400, "malformed", 'give either "order": [names] or "force": name')
    order = req.order if req.order is not None else [req.force]
    try:
        await coord.transport_orders.set(rec.peer_id, order, caller.peer_id)
    except TransportBookError as exc:
        raise _failure(exc) from None
    return json_answer(_transport_state(coord, rec))


@route_policy(Policy.SELF_OR_ADMIN)
async def clear_transport(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    caller = authenticated_peer(request)
    rec = _peer(coord, request.match_info["name"])
    try:
        await coord.transport_orders.set(rec.peer_id, None, caller.peer_id)
    except TransportBookError as exc:
        raise _failure(exc) from None
    return json_answer(_transport_state(coord, rec))


# --- status and traffic ------------------------------------------------------------------------


class PeerRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One peer as ``GET /api/v1/status`` lists it (what the dashboard's peers page shows)."""

    name: str
    peer_id: str
    mesh_ip: str
    online: bool
    last_seen: float
    version: str
    exit: bool  # it lets other peers route internet traffic through it
    is_admin: bool
    is_coordinator: bool
    transport: str  # the view peer's transport towards this peer ("" none / the view itself)
    relayed: bool  # that transport goes through the coordinator's relay
    rtt_ms: float | None  # the view peer's RTT to this peer on it
    rx_rate: float  # bytes/s this peer received, between its last two heartbeats
    tx_rate: float
    rx_bytes: int  # totals it reported (since its daemon started)
    tx_bytes: int
    transports_used: dict[str, int]  # this peer's own paths, by transport: {"udp": 3}
    location: Location | None = None  # only with server.yaml locations: true


def _rows(coord: Coordinator, view: PeerRecord) -> list[PeerRow]:
    out = []
    now = coord.clock()
    for rec in coord.peers.values():
        if rec.pending:
            continue
        traffic = coord.peerstats.traffic.get(rec.peer_id)
        fresh = traffic is not None and now - traffic.last_t <= 3 * coord.liveness.interval
        used: dict[str, int] = {}
        for t in rec.transports.values():
            used[t] = used.get(t, 0) + 1
        transport = view.transports.get(rec.name, "") if rec is not view else ""
        out.append(
            PeerRow(
                name=rec.name,
                peer_id=rec.peer_id,
                mesh_ip=rec.mesh_ip,
                online=coord.liveness.is_online(rec.peer_id),
                last_seen=rec.last_seen,
                version=rec.version,
                exit=rec.allow_exit_traffic,
                is_admin=rec.is_admin,
                is_coordinator=rec.is_coordinator,
                transport=transport,
                relayed=transport == "relay",
                rtt_ms=view.rtt_ms.get(rec.name) if rec is not view else None,
                rx_rate=round(traffic.rx_rate, 1) if traffic is not None and fresh else 0.0,
                tx_rate=round(traffic.tx_rate, 1) if traffic is not None and fresh else 0.0,
                rx_bytes=rec.counters.bytes_received,
                tx_bytes=rec.counters.bytes_sent,
                transports_used=used,
                location=coord.peerstats.location.get(rec.peer_id),
            )
        )
    out.sort(key=lambda r: r.name)
    return out


@route_policy(Policy.PEER)
async def status(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    caller = authenticated_peer(request)
    view = _peer(coord, request.query["view"]) if "view" in request.query else caller
    rows = _rows(coord, view)
    now = coord.clock()
    return json_answer(
        {
            "server": {
                "version": __version__,
                "uptime": round(now - coord.started_at, 1),
                "server_time": now,
                "peers_total": len(rows),
                "peers_online": sum(1 for r in rows if r.online),
                "locations": coord.config.locations,
            },
            "view": view.name,
            "peers": rows,
        }
    )


@route_policy(Policy.PEER)
async def traffic(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    rec = _peer(coord, request.match_info["name"])
    span = request.query.get("span", "hour")
    if span not in ("hour", "day"):
        raise ApiFailure(400, "malformed", f"span must be hour or day, got {span!r}")
    history = coord.peerstats.traffic.get(rec.peer_id)
    step, points = history.series(span, coord.clock()) if history else (0.0, [])
    return json_answer(
        {
            "name": rec.name,
            "peer_id": rec.peer_id,
            "span": span,
            "step": step or (10.0 if span == "hour" else 300.0),
            "points": [(t, round(rx, 1), round(tx, 1)) for t, rx, tx in points],
        }
    )


def add_admin_routes(app: web.Application) -> None:
    """Add this module's routes to the coordinator's app (``api.build_app`` calls it)."""
    r = app.router
    r.add_get("/api/v1/filter/rules", list_filter_rules)
    r.add_post("/api/v1/filter/rules", add_filter_rule)
    r.add_delete("/api/v1/filter/rules/{protocol}/{port}", remove_filter_rule)
    r.add_get("/api/v1/peers/{name}/transport", get_transport)
    r.add_put("/api/v1/peers/{name}/transport", set_transport)
    r.add_delete("/api/v1/peers/{name}/transport", clear_transport)
    r.add_get("/api/v1/status", status)
    r.add_get("/api/v1/peers/{name}/traffic", traffic)
