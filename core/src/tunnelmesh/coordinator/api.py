"""The coordinator's HTTPS API (aiohttp): thin handlers over :class:`Coordinator`.

Routes (all JSON; errors are ``{"error": code, "message": text, "status": n}``)::

    GET    /health                          -
    GET    /ca.crt                          -            the mesh CA (PEM)
    GET    /api/v1/ca?nonce=N               -            CA + HMAC proof (first contact)
    POST   /api/v1/register/challenge       -            {nonce, expires_in}
    POST   /api/v1/register                 mesh token   RegisterRequest -> RegisterResponse
    POST   /api/v1/heartbeat                session      Heartbeat -> HeartbeatAck
    GET    /api/v1/peers                    session|token
    GET    /api/v1/peers/{name}             session|token
    DELETE /api/v1/peers/{name}             session (self or admin)|token
    GET    /api/v1/dns                      session|token
    POST   /api/v1/rendezvous               session      RendezvousRequest -> RendezvousAck
    GET    /api/v1/push                     session      WebSocket: snapshot + filter rules, then changes

Plugins add routes through ``tunnelmesh_register_coordinator_routes(app, coordinator)``; they
can authenticate a request with :func:`authenticated_peer`, run a service for as long as the
coordinator runs with aiohttp's ``app.cleanup_ctx`` (started before the API listens, stopped when
the coordinator stops), and learn the coordinator's own mesh IP with
``await coordinator.wait_own_mesh_ip()``.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from tunnelmesh import __version__
from tunnelmesh.control.messages import (
    ApiError,
    CaResponse,
    ChallengeResponse,
    DnsResponse,
    Heartbeat,
    PeersResponse,
    RegisterRequest,
    RendezvousRequest,
    Snapshot,
    encode,
)
from tunnelmesh.coordinator.auth import CHALLENGE_TTL
from tunnelmesh.coordinator.ca import ca_proof
from tunnelmesh.coordinator.core import ApiFailure, Coordinator
from tunnelmesh.coordinator.store import PeerRecord

__all__ = ["COORDINATOR_KEY", "authenticated_peer", "build_app"]

log = logging.getLogger(__name__)

COORDINATOR_KEY = web.AppKey("coordinator", Coordinator)
MAX_BODY = 64 * 1024

_register_dec = msgspec.json.Decoder(RegisterRequest)
_heartbeat_dec = msgspec.json.Decoder(Heartbeat)
_rendezvous_dec = msgspec.json.Decoder(RendezvousRequest)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode(obj), status=status, content_type="application/json")


def _failure_response(f: ApiFailure) -> web.Response:
    resp = _json(ApiError(error=f.error, message=f.message, status=f.status), f.status)
    if f.retry_after:
        wait = min(f.retry_after, 86400.0)  # an allowance that never refills says "a day"
        resp.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
    return resp


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except ApiFailure as f:
        return _failure_response(f)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _failure_response(
            ApiFailure(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        )


def _source(request: web.Request) -> str:
    return request.remote or "?"


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def authenticated_peer(request: web.Request, *, allow_token: bool = False) -> PeerRecord | None:
    """The peer a request's session token belongs to.

    Returns None when ``allow_token`` and the request carries the mesh auth token instead (an
    operator). Charges the source's failure allowance on a bad credential.

    Raises:
        ApiFailure: 401 without a valid session token (or mesh token when allowed), 429 when the
            source is over its failure allowance.
    """
    coord = request.app[COORDINATOR_KEY]
    source = _source(request)
    coord.check_allowance(source)
    bearer = _bearer(request)
    if bearer:
        rec = coord.peer_by_session(bearer)
        if rec is not None:
            return rec
        if allow_token and coord.token_ok(bearer):
            return None
    raise coord.refuse(
        source,
        ApiFailure(401, "unauthorized", "missing or unknown session token; register (join) again"),
    )


async def _body(request: web.Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiFailure(413, "too_large", f"request body over {MAX_BODY} bytes")
    data = await request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiFailure(413, "too_large", f"request body over {MAX_BODY} bytes")
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ApiFailure(400, "malformed", f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiFailure(400, "malformed", f"request body is not JSON: {exc}") from None


async def health(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    return web.json_response({"status": "ok", "version": __version__, "peers": len(coord.peers)})


async def ca_crt(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    assert coord.ca is not None
    return web.Response(
        text=coord.ca.cert_pem,
        content_type="application/x-pem-file",
        headers={"Content-Disposition": 'attachment; filename="tunnelmesh-ca.crt"'},
    )


async def ca_with_proof(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    assert coord.ca is not None
    nonce = request.query.get("nonce", "")
    if not 16 <= len(nonce) <= 128:
        raise ApiFailure(400, "malformed", "nonce must be 16 to 128 characters")
    pem = coord.ca.cert_pem
    return _json(CaResponse(ca_pem=pem, proof=ca_proof(coord.config.auth_token, nonce, pem)))


async def challenge(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    nonce = coord.issue_challenge(_source(request))
    return _json(
        ChallengeResponse(nonce=base64.b64encode(nonce).decode("ascii"), expires_in=CHALLENGE_TTL)
    )


async def register(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    source = _source(request)
    coord.check_allowance(source)
    try:
        req = await _body(request, _register_dec)
    except ApiFailure as f:
        raise coord.refuse(source, f) from None
    resp = await coord.register(req, _bearer(request), source)
    return _json(resp)


async def heartbeat(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    rec = authenticated_peer(request)
    assert rec is not None
    hb = await _body(request, _heartbeat_dec)
    peername = request.transport.get_extra_info("peername") if request.transport else None
    observed = f"{peername[0]}:{peername[1]}" if peername else (request.remote or "")
    return _json(coord.heartbeat(rec, hb, observed))


async def list_peers(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    authenticated_peer(request, allow_token=True)
    return _json(PeersResponse(peers=coord.peer_infos(), revision=coord.revision))


async def get_peer(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    authenticated_peer(request, allow_token=True)
    rec = coord.peer_by_name(request.match_info["name"])
    if rec is None:
        raise ApiFailure(404, "no_such_peer", f"no peer named {request.match_info['name']!r}")
    return _json(coord.info(rec))


async def delete_peer(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    caller = authenticated_peer(request, allow_token=True)
    name = request.match_info["name"]
    rec = coord.peer_by_name(name)
    if rec is None:
        raise ApiFailure(404, "no_such_peer", f"no peer named {name!r}")
    if caller is not None and caller.peer_id != rec.peer_id and not caller.is_admin:
        raise ApiFailure(403, "forbidden", "only the peer itself or an admin can delete a peer")
    await coord.delete(rec)
    return web.json_response({"status": "ok", "deleted": name})


async def dns(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    authenticated_peer(request, allow_token=True)
    return _json(DnsResponse(records=coord.dns_records()))


async def rendezvous(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    rec = authenticated_peer(request)
    assert rec is not None
    req = await _body(request, _rendezvous_dec)
    return _json(coord.rendezvous(rec, req))


async def push(request: web.Request) -> web.StreamResponse:
    coord = request.app[COORDINATOR_KEY]
    rec = authenticated_peer(request)
    assert rec is not None
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_BODY)
    await ws.prepare(request)
    snapshot = encode(Snapshot(peers=coord.peer_infos(), revision=coord.revision))
    sub = coord.hub.attach(rec.peer_id, ws, snapshot + b"\n" + coord.filter_message())
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break  # the channel is server -> peer only; anything else is ignored
    finally:
        coord.hub.detach(sub)
    return ws


def build_app(coord: Coordinator, pm: Any = None) -> web.Application:
    """The aiohttp application, with plugin routes added through the hook."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
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
    r.add_get("/api/v1/dns", dns)
    r.add_post("/api/v1/rendezvous", rendezvous)
    r.add_get("/api/v1/push", push)
    if pm is not None:
        pm.hook.tunnelmesh_register_coordinator_routes(app=app, coordinator=coord)
    return app
