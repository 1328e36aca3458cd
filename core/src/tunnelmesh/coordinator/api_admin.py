"""The coordinator's run-time controls (the dashboard's and the CLI's API): handlers over
:class:`~tunnelmesh.coordinator.core.Coordinator`'s books.

Routes (JSON; errors as in :mod:`tunnelmesh.coordinator.api`; policy as declared)::

    GET    /api/v1/filter/rules                        peer    the coordinator layer, by origin
    POST   /api/v1/filter/rules                        admin   add an API rule (optional ttl)
    DELETE /api/v1/filter/rules/{protocol}/{port}      admin   ?source_peer=ID|NAME
    GET    /api/v1/peers/{name}/transport              peer    the order set and in force
    PUT    /api/v1/peers/{name}/transport              self-or-admin  {"order": [...]} | {"force": t}
    DELETE /api/v1/peers/{name}/transport              self-or-admin  back to the node's own order

Members see; admins change. A bad request is a 400 that says what is wrong, is counted in
``coordinator.stats["bad_requests"]`` and changes nothing.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from tunnelmesh.coordinator.apibase import (
    COORDINATOR_KEY,
    authenticated_peer,
    json_answer,
    read_body,
)
from tunnelmesh.coordinator.core import ApiFailure, Coordinator
from tunnelmesh.coordinator.filterbook import FilterBookError
from tunnelmesh.coordinator.store import PeerRecord
from tunnelmesh.coordinator.transportbook import TransportBookError
from tunnelmesh.policy import Policy, route_policy

__all__ = ["add_admin_routes"]


def _failure(exc: FilterBookError | TransportBookError) -> ApiFailure:
    return ApiFailure(exc.status, exc.error, exc.message)


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


def add_admin_routes(app: web.Application) -> None:
    """Add this module's routes to the coordinator's app (``api.build_app`` calls it)."""
    r = app.router
    r.add_get("/api/v1/filter/rules", list_filter_rules)
    r.add_post("/api/v1/filter/rules", add_filter_rule)
    r.add_delete("/api/v1/filter/rules/{protocol}/{port}", remove_filter_rule)
    r.add_get("/api/v1/peers/{name}/transport", get_transport)
    r.add_put("/api/v1/peers/{name}/transport", set_transport)
    r.add_delete("/api/v1/peers/{name}/transport", clear_transport)
