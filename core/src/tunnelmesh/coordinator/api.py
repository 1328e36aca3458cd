"""The coordinator's HTTPS API (aiohttp): thin handlers over :class:`Coordinator`.

Routes (all JSON; errors are ``{"error": code, "message": text, "status": n}``); the policy
column is what :func:`tunnelmesh.route_policy` declares on each handler::

    GET    /health                          public
    GET    /ca.crt                          public       the mesh CA (PEM)
    GET    /api/v1/ca?nonce=N               public       CA + HMAC proof (first contact)
    POST   /api/v1/register/challenge       public       {nonce, expires_in}
    POST   /api/v1/register                 join         RegisterRequest -> RegisterResponse
    POST   /api/v1/heartbeat                peer         Heartbeat -> HeartbeatAck
    GET    /api/v1/peers                    peer
    GET    /api/v1/peers/{name}             peer
    DELETE /api/v1/peers/{name}             self-or-admin
    POST   /api/v1/peers/{name}/approve     admin        admit a key (approve_new_peers)
    GET    /api/v1/pending                  admin        keys waiting for approval
    DELETE /api/v1/names/{name}             admin        free a name a deleted key held
    POST   /api/v1/token/rotate             admin        -> {"token": new join token}
    GET    /api/v1/groups                   peer         every group and its peer IDs
    POST   /api/v1/groups                   admin        {"name"} create
    DELETE /api/v1/groups/{group}           admin
    POST   /api/v1/groups/{group}/members   admin        {"add": [...], "remove": [...]}
    GET    /api/v1/dns                      peer
    POST   /api/v1/rendezvous               peer         RendezvousRequest -> RendezvousAck
    GET    /api/v1/push                     peer         WebSocket: snapshot + filter rules +
                                                         clients, then changes

The run-time controls the dashboard and the CLI use (coordinator filter rules, transport
orders, status and traffic history) are in :mod:`tunnelmesh.coordinator.api_admin`.

Every route declares its policy (:mod:`tunnelmesh.policy`) and :func:`build_app` refuses a
route without one; the ``_authorize`` middleware checks the caller before the handler runs.
The mesh join token is no credential here: it only lets a new key register.

Plugins add routes through ``tunnelmesh_register_coordinator_routes(app, coordinator)``,
decorating each handler with ``@tunnelmesh.route_policy(...)``; the handler gets the caller
with :func:`authenticated_peer`, can run a service for as long as the coordinator runs with
aiohttp's ``app.cleanup_ctx`` (started before the API listens, stopped when the coordinator
stops), and learn the coordinator's own mesh IP with ``await coordinator.wait_own_mesh_ip()``.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from tunnelmesh import __version__
from tunnelmesh.abc import CoordinatorView
from tunnelmesh.control.messages import (
    ApiError,
    CaResponse,
    ChallengeResponse,
    DnsResponse,
    Heartbeat,
    PeersResponse,
    RegisterRequest,
    RendezvousRequest,
    location_problem,
)
from tunnelmesh.coordinator.api_admin import add_admin_routes
from tunnelmesh.coordinator.apibase import (
    COORDINATOR_KEY,
    MAX_BODY,
    authenticated_peer,
    bearer_of,
    json_answer,
    read_body,
    source_of,
    vouch_caller,
)
from tunnelmesh.coordinator.auth import CHALLENGE_TTL
from tunnelmesh.coordinator.ca import ca_proof
from tunnelmesh.coordinator.core import ApiFailure, Coordinator, store_unavailable
from tunnelmesh.coordinator.groups import GroupError
from tunnelmesh.coordinator.store import StoreConflict
from tunnelmesh.errors import PluginError, StateStoreError
from tunnelmesh.identity import fingerprint_of
from tunnelmesh.policy import Policy, policy_of, route_policy

__all__ = [
    "API_MIDDLEWARES",
    "COORDINATOR_KEY",
    "authenticated_peer",
    "build_app",
    "route_table",
    "vouch_caller",
]

log = logging.getLogger(__name__)

_register_dec = msgspec.json.Decoder(RegisterRequest)
_heartbeat_dec = msgspec.json.Decoder(Heartbeat)
_rendezvous_dec = msgspec.json.Decoder(RendezvousRequest)


def _failure_response(f: ApiFailure) -> web.Response:
    resp = json_answer(ApiError(error=f.error, message=f.message, status=f.status), f.status)
    if f.retry_after:
        wait = min(f.retry_after, 86400.0)  # an allowance that never refills says "a day"
        resp.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
    return resp


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except ApiFailure as f:
        if f.status == 400:
            request.app[COORDINATOR_KEY].stats["bad_requests"] += 1
        return _failure_response(f)
    except StoreConflict as exc:  # another coordinator's write won a race
        return _failure_response(ApiFailure(409, "conflict", str(exc)))
    except StateStoreError as exc:  # a write a handler did not expect to fail (a group, ...)
        return _failure_response(store_unavailable(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _failure_response(
            ApiFailure(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        )


@web.middleware
async def _authorize(request: web.Request, handler: Any) -> web.StreamResponse:
    """Check the caller against the matched route's declared :class:`~tunnelmesh.Policy`."""
    match = request.match_info
    if match.http_exception is not None:  # no route: 404/405 as aiohttp says
        raise match.http_exception
    declared = policy_of(match.handler)
    if declared is None:  # build_app refuses these; a route added later is refused here
        log.error("refused %s %s: the route declares no policy", request.method, request.path)
        raise ApiFailure(403, "no_policy", "this route declares no access policy")
    policy = declared.policy
    if policy in (Policy.PUBLIC, Policy.JOIN):
        return await handler(request)  # type: ignore[no-any-return]
    coord = request.app[COORDINATOR_KEY]
    rec = authenticated_peer(request)
    if policy is Policy.ADMIN and not coord.is_admin(rec):
        raise coord.refuse(
            source_of(request), ApiFailure(403, "forbidden", "admins only"), registration=False
        )
    if policy is Policy.SELF_OR_ADMIN and not coord.is_admin(rec):
        target = coord.peer_by_name(match.get(declared.target, ""))
        if target is None or target.peer_id != rec.peer_id:
            raise coord.refuse(
                source_of(request),
                ApiFailure(403, "forbidden", "only the peer itself or an admin may do this"),
                registration=False,
            )
    return await handler(request)  # type: ignore[no-any-return]


API_MIDDLEWARES = (_errors, _authorize)
"""The API's middlewares, in order: errors as JSON, then each route's declared policy checked
(for a plugin's application that serves the API's handlers; see :func:`vouch_caller`)."""


def route_table(app: web.Application) -> list[tuple[str, str, Policy | None]]:
    """``(method, path, policy)`` of every route of ``app`` (None: no policy declared)."""
    out = []
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else "?"
        found = policy_of(route.handler)
        out.append((route.method, info, found.policy if found else None))
    return out


@route_policy(Policy.PUBLIC)
async def health(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    return web.json_response({"status": "ok", "version": __version__, "peers": len(coord.peers)})


@route_policy(Policy.PUBLIC)
async def ca_crt(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    assert coord.ca is not None
    return web.Response(
        text=coord.ca.cert_pem,
        content_type="application/x-pem-file",
        headers={"Content-Disposition": 'attachment; filename="tunnelmesh-ca.crt"'},
    )


@route_policy(Policy.PUBLIC)
async def ca_with_proof(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    assert coord.ca is not None
    nonce = request.query.get("nonce", "")
    if not 16 <= len(nonce) <= 128:
        raise ApiFailure(400, "malformed", "nonce must be 16 to 128 characters")
    pem = coord.ca.cert_pem
    return json_answer(CaResponse(ca_pem=pem, proof=ca_proof(coord.auth_token, nonce, pem)))


@route_policy(Policy.PUBLIC)
async def challenge(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    nonce = coord.issue_challenge(source_of(request))
    return json_answer(
        ChallengeResponse(nonce=base64.b64encode(nonce).decode("ascii"), expires_in=CHALLENGE_TTL)
    )


@route_policy(Policy.JOIN)
async def register(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    source = source_of(request)
    coord.check_allowance(source)
    try:
        req = await read_body(request, _register_dec)
    except ApiFailure as f:
        raise coord.refuse(source, f) from None
    resp = await coord.register(req, bearer_of(request), source)
    return json_answer(resp)


@route_policy(Policy.PEER)
async def heartbeat(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    rec = authenticated_peer(request)
    hb = await read_body(request, _heartbeat_dec)
    if hb.location is not None and (why := location_problem(hb.location)):
        raise ApiFailure(400, "bad_location", why)  # counted (bad_requests), nothing changes
    peername = request.transport.get_extra_info("peername") if request.transport else None
    observed = f"{peername[0]}:{peername[1]}" if peername else (request.remote or "")
    return json_answer(coord.heartbeat(rec, hb, observed))


@route_policy(Policy.PEER)
async def list_peers(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    return json_answer(
        PeersResponse(
            peers=coord.peer_infos(), revision=coord.revision, clients=coord.clients.infos()
        )
    )


@route_policy(Policy.PEER)
async def get_peer(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    rec = coord.peer_by_name(request.match_info["name"])
    if rec is None or rec.pending:
        raise ApiFailure(404, "no_such_peer", f"no peer named {request.match_info['name']!r}")
    return json_answer(coord.info(rec))


@route_policy(Policy.SELF_OR_ADMIN)
async def delete_peer(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    name = request.match_info["name"]
    rec = coord.peer_by_name(name)
    if rec is None:
        raise ApiFailure(404, "no_such_peer", f"no peer named {name!r}")
    await coord.delete(rec)
    return web.json_response({"status": "ok", "deleted": name})


@route_policy(Policy.PEER)
async def dns(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    return json_answer(DnsResponse(records=coord.dns_records()))


@route_policy(Policy.PEER)
async def rendezvous(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    rec = authenticated_peer(request)
    req = await read_body(request, _rendezvous_dec)
    return json_answer(coord.rendezvous(rec, req))


@route_policy(Policy.PEER)
async def push(request: web.Request) -> web.StreamResponse:
    coord = request.app[COORDINATOR_KEY]
    rec = authenticated_peer(request)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_BODY)
    await ws.prepare(request)
    # No await between the snapshot and attach: the deltas this channel gets continue from
    # the snapshot's revision without a gap.
    first = b"\n".join(
        (
            coord.snapshot_message(),
            coord.filter_message(),
            coord.transport_orders.message(rec.peer_id),  # this node's (api_admin)
            coord.clients.message_for(rec.peer_id),
        )
    )
    sub = coord.hub.attach(rec.peer_id, ws, first)
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break  # the channel is server -> peer only; anything else is ignored
    finally:
        coord.hub.detach(sub)
    return ws


@route_policy(Policy.ADMIN)
async def approve_peer(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    name = request.match_info["name"]
    rec = coord.peer_by_name(name)
    if rec is None:
        raise ApiFailure(404, "no_such_peer", f"no peer named {name!r}")
    if not await coord.approve(rec):
        raise ApiFailure(409, "not_pending", f"peer {name!r} does not wait for approval")
    return web.json_response({"status": "ok", "approved": name, "peer_id": rec.peer_id})


@route_policy(Policy.ADMIN)
async def pending_peers(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    return web.json_response(
        {
            "pending": [
                {
                    "name": r.name,
                    "peer_id": r.peer_id,
                    "fingerprint": fingerprint_of(r.public_key),
                    "created_at": r.created_at,
                }
                for r in coord.pending_peers()
            ]
        }
    )


@route_policy(Policy.ADMIN)
async def release_name(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    name = request.match_info["name"]
    owner = await coord.release_name(name)
    return web.json_response({"status": "ok", "released": name, "peer_id": owner})


@route_policy(Policy.ADMIN)
async def rotate_token(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    token = await coord.rotate_token()
    return web.json_response({"status": "ok", "token": token})


def _group_failure(exc: GroupError) -> ApiFailure:
    return ApiFailure(exc.status, exc.error, exc.message)


def _groupjson_answer(coord: Coordinator, name: str) -> dict[str, Any]:
    members = sorted(coord.groups.members(name))
    names = {pid: coord.peers[pid].name for pid in members if pid in coord.peers}
    return {"name": name, "members": members, "names": names}


@route_policy(Policy.PEER)
async def list_groups(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    return web.json_response(
        {"groups": [_groupjson_answer(coord, n) for n in coord.groups.names()]}
    )


class _GroupCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class _GroupChange(msgspec.Struct, forbid_unknown_fields=True):
    add: list[str] = msgspec.field(default_factory=list)
    remove: list[str] = msgspec.field(default_factory=list)


_group_create_dec = msgspec.json.Decoder(_GroupCreate)
_group_change_dec = msgspec.json.Decoder(_GroupChange)


@route_policy(Policy.ADMIN)
async def create_group(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    req = await read_body(request, _group_create_dec)
    try:
        await coord.groups.create(req.name)
    except GroupError as exc:
        raise _group_failure(exc) from None
    return web.json_response(_groupjson_answer(coord, req.name), status=201)


@route_policy(Policy.ADMIN)
async def delete_group(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    name = request.match_info["group"]
    try:
        await coord.groups.delete(name)
    except GroupError as exc:
        raise _group_failure(exc) from None
    return web.json_response({"status": "ok", "deleted": name})


@route_policy(Policy.ADMIN)
async def change_group(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    name = request.match_info["group"]
    req = await read_body(request, _group_change_dec)
    add = [coord.resolve_peer(x) for x in req.add]
    remove = [coord.resolve_peer(x, known_only=False) for x in req.remove]
    try:
        await coord.groups.change(name, add=add, remove=remove)
    except GroupError as exc:
        raise _group_failure(exc) from None
    return web.json_response(_groupjson_answer(coord, name))


def build_app(coord: Coordinator, pm: Any = None) -> web.Application:
    """The aiohttp application, with plugin routes added through the hook.

    Raises:
        PluginError: a route (a plugin's) declares no policy.
    """
    app = web.Application(middlewares=[_errors, _authorize], client_max_size=MAX_BODY)
    app[COORDINATOR_KEY] = coord
    r = app.router
    r.add_get("/health", health)
    r.add_get("/ca.crt", ca_crt)
    r.add_get("/api/v1/ca", ca_with_proof)
    r.add_post("/api/v1/register/challenge", challenge)
    r.add_post("/api/v1/register", register)
    r.add_post("/api/v1/heartbeat", heartbeat)
    r.add_get("/api/v1/peers", list_peers)
    r.add_get("/api/v1/peers/{name}", get_peer)
    r.add_delete("/api/v1/peers/{name}", delete_peer)
    r.add_post("/api/v1/peers/{name}/approve", approve_peer)
    r.add_get("/api/v1/pending", pending_peers)
    r.add_delete("/api/v1/names/{name}", release_name)
    r.add_post("/api/v1/token/rotate", rotate_token)
    r.add_get("/api/v1/groups", list_groups)
    r.add_post("/api/v1/groups", create_group)
    r.add_delete("/api/v1/groups/{group}", delete_group)
    r.add_post("/api/v1/groups/{group}/members", change_group)
    r.add_get("/api/v1/dns", dns)
    r.add_post("/api/v1/rendezvous", rendezvous)
    r.add_get("/api/v1/push", push)
    add_admin_routes(app)
    if pm is not None:
        view: CoordinatorView = coord  # mypy: the coordinator is what the hook promises
        pm.hook.tunnelmesh_register_coordinator_routes(app=app, coordinator=view)
    missing = [f"{m} {path}" for m, path, policy in route_table(app) if policy is None]
    if missing:
        raise PluginError(
            f"coordinator route(s) without an access policy: {', '.join(missing)}; decorate "
            "each handler with @tunnelmesh.route_policy(Policy...)"
        )
    return app
