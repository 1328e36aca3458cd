"""The coordinator's API for WireGuard clients (added through
``tunnelmesh_register_coordinator_routes``)::

    GET    /api/v1/wg/clients                 peer    every client (no preshared keys)
    GET    /api/v1/wg/clients/{client}        peer    one client
    POST   /api/v1/wg/clients                 admin   add: AddClient -> 201 ClientAdded
    POST   /api/v1/wg/clients/{client}/enable  admin
    POST   /api/v1/wg/clients/{client}/disable admin
    DELETE /api/v1/wg/clients/{client}        admin

Who may: only admins add, enable, disable and remove clients. A client is a mesh identity (a
mesh IP, a DNS name, a source other peers' filters name): letting any peer mint them would let
it squat names and drain the mesh range, and a concentrator adding clients for itself would
make every concentrator an admin of names. Every peer may read the list (each peer receives
the records on the push channel anyway, to route them).

The coordinator gets only the client's public key (and an optional preshared key, a secret it
hands to the concentrator alone); ``tunnelmesh wg add`` makes the key pair where it runs.
A malformed request (bad key, bad name) is a 400 that says what is wrong, is counted
(``ClientBook.stats["refused"]`` and ``refused_by``) and changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import msgspec
from aiohttp import web
from tunnelmesh import Policy, route_policy
from tunnelmesh.abc import CoordinatorView
from tunnelmesh.control.messages import ClientInfo
from tunnelmesh.coordinator import ApiFailure, ClientRecord, ClientRefused, PeerRecord
from tunnelmesh.coordinator.api import COORDINATOR_KEY, authenticated_peer
from tunnelmesh.identity import parse_public_key, x25519_public_of

__all__ = ["KIND", "AddClient", "ClientAdded", "Concentrator", "install", "wg_key_problem"]

KIND = "wireguard"
MAX_BODY = 16 * 1024
MAX_LIFETIME = 10 * 365 * 86400.0
"""The furthest expiry accepted (ten years): further is a mistake, not a plan."""


class AddClient(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/v1/wg/clients``."""

    name: str
    public_key: str  # base64 X25519, as `wg pubkey` prints it
    preshared_key: str = ""  # base64, 32 bytes, optional
    concentrator: str = ""  # peer name or ID; "" = the only concentrator of the mesh
    expires_at: float = 0.0  # unix time, 0 = never
    exit: str = ""  # peer name or ID of an exit node: the client's internet goes through it


class Concentrator(msgspec.Struct, kw_only=True):
    """What a client's config needs of its concentrator."""

    name: str
    peer_id: str
    wg_public_key: str
    endpoint: str
    mesh_ip: str


class ClientAdded(msgspec.Struct, kw_only=True):
    """The answer to an add: the client, and what its wg-quick config needs."""

    client: ClientInfo
    concentrator: Concentrator
    mesh_cidr: str
    domain: str
    exit_name: str = ""


def wg_key_problem(text: str, what: str = "public key") -> str | None:
    """Why ``text`` is not a WireGuard key (base64 of 32 bytes, as wg prints it), or None."""
    if not isinstance(text, str) or len(text) != 44:
        return f"{what} must be 44 characters of base64 (32 bytes, as `wg pubkey` prints it)"
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return f"{what} is not valid base64"
    if len(raw) != 32 or base64.b64encode(raw).decode("ascii") != text:
        return f"{what} must be the base64 of exactly 32 bytes"
    if raw == bytes(32):
        return f"{what} is all zeros"
    return None


def _refuse(coord: CoordinatorView, error: str, message: str, status: int = 400) -> ApiFailure:
    stats = coord.clients.stats
    stats["refused"] = stats.get("refused", 0) + 1
    by = coord.clients.refused_by
    by[error] = by.get(error, 0) + 1
    return ApiFailure(status, error, message)


async def _decode(request: web.Request, coord: CoordinatorView) -> AddClient:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _refuse(coord, "too_large", f"request body over {MAX_BODY} bytes", 413)
    data = await request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise _refuse(coord, "too_large", f"request body over {MAX_BODY} bytes", 413)
    try:
        return msgspec.json.decode(data, type=AddClient)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _refuse(coord, "malformed", f"invalid request: {exc}") from None


def _peer(coord: CoordinatorView, who: str, role: str) -> PeerRecord:
    rec = coord.peer_by_name(who) or coord.peers.get(who)
    if rec is None or rec.pending:
        raise _refuse(coord, "no_such_peer", f"no {role} peer named or with the ID {who!r}", 404)
    return rec


def _wg_public_key(rec: PeerRecord) -> str:
    raw = parse_public_key(rec.public_key).public_bytes_raw()
    return base64.b64encode(x25519_public_of(raw)).decode("ascii")


def _concentrator(coord: CoordinatorView, who: str) -> PeerRecord:
    if who:
        rec = _peer(coord, who, "concentrator")
        if not rec.concentrator_endpoint:
            raise _refuse(
                coord,
                "not_a_concentrator",
                f"peer {rec.name!r} serves no WireGuard clients (its peer.yaml needs "
                "wireguard: {enabled: true, endpoint: HOST:PORT})",
                409,
            )
        return rec
    serving = sorted(
        (r for r in coord.peers.values() if r.concentrator_endpoint and not r.pending),
        key=lambda r: r.name,
    )
    if not serving:
        raise _refuse(
            coord,
            "no_concentrator",
            "no peer serves WireGuard clients: set wireguard: {enabled: true, endpoint: "
            "HOST:PORT} in one peer's peer.yaml (docs/wireguard.md)",
            409,
        )
    if len(serving) > 1:
        names = ", ".join(r.name for r in serving)
        raise _refuse(
            coord, "choose_concentrator", f"several concentrators ({names}): choose one", 400
        )
    return serving[0]


def _client(coord: CoordinatorView, request: web.Request) -> ClientRecord:
    name = request.match_info["client"]
    rec = coord.clients.by_name(name)
    if rec is None or rec.kind != KIND:
        raise ApiFailure(404, "no_such_client", f"no WireGuard client named {name!r}")
    return rec


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(obj), status=status, content_type="application/json"
    )


def _view(coord: CoordinatorView, rec: ClientRecord) -> dict[str, Any]:
    """A client as the API shows it: the record (never the preshared key), with the names of
    its concentrator and exit, and whether it has a preshared key."""
    info = coord.clients.info(rec, status=True)
    out: dict[str, Any] = msgspec.to_builtins(info)
    out.update(enabled=info.enabled, active=info.active, expires_at=info.expires_at)
    conc = coord.peers.get(rec.concentrator)
    out["concentrator_name"] = conc.name if conc else ""
    ex = coord.peers.get(rec.exit_peer) if rec.exit_peer else None
    out["exit_name"] = ex.name if ex else ""
    out["has_preshared_key"] = bool(rec.preshared_key)
    # flat, readable columns for the dashboard's panel (PANEL_COLUMNS)
    now = time.time()
    out["state"] = "disabled" if not info.enabled else "expired" if not info.live(now) else "active"
    handshake = info.status.latest_handshake if info.status is not None else 0.0
    out["latest_handshake_utc"] = _utc(handshake) if handshake else "never"
    out["expires_utc"] = _utc(info.expires_at) if info.expires_at else "never"
    return out


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


PANEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "Name"),
    ("mesh_ip", "Mesh IP"),
    ("concentrator_name", "Concentrator"),
    ("state", "State"),
    ("latest_handshake_utc", "Latest handshake (UTC)"),
    ("expires_utc", "Expires (UTC)"),
    ("exit_name", "Exit"),
    ("public_key", "Public key"),
)
"""The columns of the dashboard's WireGuard clients page (keys of :func:`_view`)."""


@route_policy(Policy.PEER)
async def list_clients(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    recs = [r for r in coord.clients.sorted() if r.kind == KIND]
    return _json({"clients": [_view(coord, r) for r in recs]})


@route_policy(Policy.PEER)
async def get_client(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    return _json(_view(coord, _client(coord, request)))


@route_policy(Policy.ADMIN)
async def add_client(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    caller = authenticated_peer(request)
    req = await _decode(request, coord)
    why = wg_key_problem(req.public_key)
    if why is not None:
        raise _refuse(coord, "bad_key", why)
    if req.preshared_key:
        why = wg_key_problem(req.preshared_key, "preshared key")
        if why is not None:
            raise _refuse(coord, "bad_key", why)
    raw = base64.b64decode(req.public_key)
    if any(_wg_public_key(p) == req.public_key for p in coord.peers.values()):
        raise _refuse(coord, "bad_key", "that public key is a mesh peer's key", 409)
    now = coord.clock()
    if req.expires_at and not now < req.expires_at <= now + MAX_LIFETIME:
        raise _refuse(coord, "bad_expiry", "expires_at must lie within the next ten years")
    conc = _concentrator(coord, req.concentrator)
    exit_peer = ""
    exit_name = ""
    if req.exit:
        ex = _peer(coord, req.exit, "exit")
        if not ex.allow_exit_traffic:
            raise _refuse(
                coord,
                "not_an_exit",
                f"peer {ex.name!r} is no exit node (join --allow-exit-traffic)",
                409,
            )
        exit_peer, exit_name = ex.peer_id, ex.name
    try:
        rec = await coord.clients.add(
            name=req.name,
            kind=KIND,
            public_key=req.public_key,
            raw_key=raw,
            concentrator=conc.peer_id,
            preshared_key=req.preshared_key,
            expires_at=req.expires_at,
            exit_peer=exit_peer,
            created_by=caller.peer_id,
        )
    except ClientRefused as f:
        if f.status < 500:
            raise _refuse(coord, f.error, f.message, f.status) from None
        raise ApiFailure(f.status, f.error, f.message, f.retry_after) from None
    added = ClientAdded(
        client=coord.clients.info(rec),
        concentrator=Concentrator(
            name=conc.name,
            peer_id=conc.peer_id,
            wg_public_key=_wg_public_key(conc),
            endpoint=conc.concentrator_endpoint,
            mesh_ip=conc.mesh_ip,
        ),
        mesh_cidr=coord.config.mesh_cidr,
        domain=coord.domain,
        exit_name=exit_name,
    )
    return _json(added, 201)


async def _set_enabled(request: web.Request, enabled: bool) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    rec = _client(coord, request)
    try:
        changed = await coord.clients.set_enabled(rec, enabled)
    except ClientRefused as f:
        raise ApiFailure(f.status, f.error, f.message, f.retry_after) from None
    now = coord.clients.by_name(rec.name) or rec
    return _json({**_view(coord, now), "changed": changed})


@route_policy(Policy.ADMIN)
async def enable_client(request: web.Request) -> web.Response:
    return await _set_enabled(request, True)


@route_policy(Policy.ADMIN)
async def disable_client(request: web.Request) -> web.Response:
    return await _set_enabled(request, False)


@route_policy(Policy.ADMIN)
async def remove_client(request: web.Request) -> web.Response:
    coord = request.app[COORDINATOR_KEY]
    rec = _client(coord, request)
    try:
        await coord.clients.remove(rec)
    except ClientRefused as f:
        raise ApiFailure(f.status, f.error, f.message, f.retry_after) from None
    return _json({"status": "ok", "removed": rec.name, "client_id": rec.client_id})


def install(app: web.Application, coordinator: CoordinatorView) -> None:
    """Add the WireGuard client routes to the coordinator's application."""
    r = app.router
    r.add_get("/api/v1/wg/clients", list_clients)
    r.add_post("/api/v1/wg/clients", add_client)
    r.add_get("/api/v1/wg/clients/{client}", get_client)
    r.add_delete("/api/v1/wg/clients/{client}", remove_client)
    r.add_post("/api/v1/wg/clients/{client}/enable", enable_client)
    r.add_post("/api/v1/wg/clients/{client}/disable", disable_client)
