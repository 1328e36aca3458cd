"""The peer side of the mesh's S3 service: ask the coordinator for this peer's credential.

A peer that joined a mesh has a context (coordinator URL, pinned CA, session token). With it,
:func:`fetch_credential` gets the peer's own S3 key, secret and endpoint from the coordinator,
and :func:`mesh_ssl_context` trusts the mesh CA for the S3 endpoint too.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh.errors import ConfigError, TunnelmeshError

from tunnelmesh_s3.mesh import MeshCredential, MeshS3Info

__all__ = [
    "MeshS3Error",
    "fetch_credential",
    "fetch_info",
    "load_context",
    "mesh_ssl_context",
    "revoke",
]

_TIMEOUT = aiohttp.ClientTimeout(total=20, connect=5)


class MeshS3Error(TunnelmeshError):
    """The coordinator refused or could not be reached."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def load_context(name: str | None = None) -> Context:
    """The named or active context.

    Raises:
        ConfigError: none active, or no such context.
    """
    return ContextStore().get(name)


def ca_pem_of(ctx: Context) -> str:
    try:
        return Path(ctx.ca_path).read_text(encoding="ascii")
    except OSError as exc:
        raise ConfigError(
            f"the pinned CA of context {ctx.name!r} is missing ({exc.strerror}); join again"
        ) from None


def mesh_ssl_context(ctx: Context) -> ssl.SSLContext:
    """A TLS client context that trusts the context's mesh CA (hostnames are checked)."""
    return client_ssl_context(ca_pem_of(ctx))


async def _call(ctx: Context, method: str, path: str, body: Any = None) -> bytes:
    if not ctx.session_token:
        raise ConfigError(f"context {ctx.name!r} has no session; join the mesh again")
    connector = aiohttp.TCPConnector(ssl=mesh_ssl_context(ctx))
    headers = {"Authorization": f"Bearer {ctx.session_token}"}
    data = msgspec.json.encode(body) if body is not None else None
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=_TIMEOUT) as http,
            http.request(
                method,
                ctx.server.rstrip("/") + path,
                data=data,
                headers=headers,
                server_hostname=COORDINATOR_NAME,
            ) as resp,
        ):
            raw = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise MeshS3Error(f"cannot reach the coordinator at {ctx.server}: {exc}") from None
    if status == 404 and path.startswith("/api/v1/s3") and b"no_such_peer" not in raw:
        raise MeshS3Error(
            f"the coordinator at {ctx.server} does not serve S3 (s3.enabled is off)", 404
        )
    if status >= 400:
        try:
            err = msgspec.json.decode(raw)
            text = f"{err['error']}: {err['message']}"
        except (msgspec.DecodeError, KeyError, TypeError):
            text = raw.decode("utf-8", "replace")[:200]
        raise MeshS3Error(f"coordinator refused ({status} {text})", status)
    return raw


async def fetch_credential(ctx: Context, *, rotate: bool = False) -> MeshCredential:
    """This peer's S3 credential (created at first request; ``rotate`` replaces it).

    Raises:
        MeshS3Error: refused (session expired, S3 off) or unreachable.
    """
    raw = await _call(ctx, "POST", "/api/v1/s3/credentials", {"rotate": rotate})
    return msgspec.json.decode(raw, type=MeshCredential)


async def fetch_info(ctx: Context) -> MeshS3Info:
    """Where the mesh's S3 service listens."""
    return msgspec.json.decode(await _call(ctx, "GET", "/api/v1/s3"), type=MeshS3Info)


async def revoke(ctx: Context, peer: str = "") -> int:
    """Revoke every S3 key of ``peer`` (default: this peer); how many there were."""
    raw = await _call(ctx, "DELETE", f"/api/v1/s3/credentials/{peer or ctx.peer_name}")
    return int(msgspec.json.decode(raw)["revoked"])
