"""What every coordinator API handler uses: the app's coordinator, the caller, JSON in and out.

Core's handlers (``api``, ``api_admin``) and plugins' handlers import from here;
``tunnelmesh.coordinator.api`` re-exports :data:`COORDINATOR_KEY`, :func:`authenticated_peer`
and :func:`vouch_caller` for plugins.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from tunnelmesh.control.messages import encode
from tunnelmesh.coordinator.core import ApiFailure, Coordinator
from tunnelmesh.coordinator.store import PeerRecord

__all__ = [
    "COORDINATOR_KEY",
    "MAX_BODY",
    "authenticated_peer",
    "bearer_of",
    "json_answer",
    "read_body",
    "source_of",
    "vouch_caller",
]

COORDINATOR_KEY = web.AppKey("coordinator", Coordinator)
_CALLER = web.RequestKey("tunnelmesh_caller", PeerRecord)
MAX_BODY = 64 * 1024


def json_answer(obj: Any, status: int = 200) -> web.Response:
    """``obj`` (a msgspec Struct, dict, list, ...) as a JSON response."""
    return web.Response(body=encode(obj), status=status, content_type="application/json")


def source_of(request: web.Request) -> str:
    return request.remote or "?"


def bearer_of(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def authenticated_peer(request: web.Request) -> PeerRecord:
    """The peer a request's session token belongs to (the mesh join token is none).

    Charges the source's failure allowance on a bad credential.

    Raises:
        ApiFailure: 401 without a valid session token, 429 when the source is over its
            failure allowance.
    """
    known: PeerRecord | None = request.get(_CALLER)
    if known is not None:
        return known
    coord = request.app[COORDINATOR_KEY]
    source = source_of(request)
    coord.check_allowance(source)
    bearer = bearer_of(request)
    rec = coord.peer_by_session(bearer) if bearer else None
    if rec is None and coord.token_ok(bearer):
        raise coord.refuse(
            source,
            ApiFailure(
                403,
                "token_not_credential",
                "the mesh join token only registers a new key; it grants nothing else",
            ),
            registration=False,
        )
    if rec is None:
        raise coord.refuse(
            source,
            ApiFailure(
                401, "unauthorized", "missing or unknown session token; register (join) again"
            ),
            registration=False,
        )
    if rec.pending:
        raise ApiFailure(
            403,
            "pending_approval",
            f"this key waits for an admin's approval: tunnelmesh peers approve {rec.name}",
        )
    request[_CALLER] = rec
    return rec


def vouch_caller(request: web.Request, rec: PeerRecord) -> None:
    """Name the caller of a request that another server authenticated without a session token.

    For a plugin that serves the coordinator's API routes on a listener of its own (the admin
    dashboard on the mesh IP identifies the caller by the source address the tunnel
    authenticated): :func:`authenticated_peer` then returns ``rec``, and the routes' declared
    policies are checked against it exactly as for a session token. The caller of this function
    is responsible for having authenticated ``rec`` (and for refusing a pending key).
    """
    request[_CALLER] = rec


async def read_body(request: web.Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    """The request body decoded strictly by ``decoder``.

    Raises:
        ApiFailure: 413 over MAX_BODY bytes, 400 not JSON or not the expected shape.
    """
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
