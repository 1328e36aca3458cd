"""The coordinator's run-time controls (the dashboard's and the CLI's API): handlers over
:class:`~tunnelmesh.coordinator.core.Coordinator`'s books.

Routes (JSON; errors as in :mod:`tunnelmesh.coordinator.api`; policy as declared)::

    GET    /api/v1/filter/rules                        peer    the coordinator layer, by origin
    POST   /api/v1/filter/rules                        admin   add an API rule (optional ttl)
    DELETE /api/v1/filter/rules/{protocol}/{port}      admin   ?source_peer=ID|NAME

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
from tunnelmesh.policy import Policy, route_policy

__all__ = ["add_admin_routes"]


def _failure(exc: FilterBookError) -> ApiFailure:
    return ApiFailure(exc.status, exc.error, exc.message)


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


def add_admin_routes(app: web.Application) -> None:
    """Add this module's routes to the coordinator's app (``api.build_app`` calls it)."""
    r = app.router
    r.add_get("/api/v1/filter/rules", list_filter_rules)
    r.add_post("/api/v1/filter/rules", add_filter_rule)
    r.add_delete("/api/v1/filter/rules/{protocol}/{port}", remove_filter_rule)
