"""Options shared by the commands that talk to an S3 endpoint, and how they are resolved.

Where and as whom a command talks:

1. ``--endpoint-url`` with ``--access-key``/``--secret-key``: that endpoint, those keys (any S3
   server, or ``tunnelmesh s3 serve``); ``--ca-file`` adds a CA to trust.
2. Otherwise, on a mesh (``--context`` or the active context): the peer's own credential and
   the S3 endpoint from the coordinator, trusting the mesh CA; explicit options still win.
3. Otherwise ``http://127.0.0.1:9000`` with the given keys.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.errors import ConfigError

from tunnelmesh_s3.client import S3Client

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ENDPOINT = "http://127.0.0.1:9000"
DEFAULT_REGION = "us-east-1"


def context_option(fn: F) -> F:
    return click.option(
        "--context",
        "context_name",
        metavar="NAME",
        envvar="TUNNELMESH_CONTEXT",
        show_envvar=True,
        help="Mesh context whose S3 service and credential to use (default: the active one).",
    )(fn)


def endpoint_options(fn: F) -> F:
    """``--endpoint-url``, ``--access-key``, ``--secret-key``, ``--region``, ``--ca-file``,
    ``--context``: where and as whom."""
    options = [
        click.option(
            "--endpoint-url",
            default=None,
            envvar="TUNNELMESH_S3_ENDPOINT",
            show_envvar=True,
            help=f"The S3 endpoint (default: the mesh's, else {DEFAULT_ENDPOINT}).",
        ),
        click.option(
            "--access-key",
            default=None,
            envvar="TUNNELMESH_S3_ACCESS_KEY",
            show_envvar=True,
            help="Access key (default on a mesh: this peer's, from the coordinator).",
        ),
        click.option(
            "--secret-key",
            default=None,
            envvar="TUNNELMESH_S3_SECRET_KEY",
            show_envvar=True,
            help="Secret key that goes with the access key.",
        ),
        click.option(
            "--region",
            default=None,
            envvar="TUNNELMESH_S3_REGION",
            show_envvar=True,
            help=f"Region the server signs for (default: the mesh's, else {DEFAULT_REGION}).",
        ),
        click.option(
            "--ca-file",
            default=None,
            type=click.Path(exists=True, dir_okay=False),
            envvar="TUNNELMESH_S3_CA_FILE",
            show_envvar=True,
            help="Trust this CA for an https endpoint (default on a mesh: the mesh CA).",
        ),
        context_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@dataclass
class Target:
    """A resolved endpoint and credential."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    ssl: ssl.SSLContext | None = None
    ca_path: str = ""
    context: Context | None = None
    principal: str = ""


def _context(name: str | None) -> Context | None:
    store = ContextStore()
    if not name and not store.active:
        return None
    return store.get(name)


async def resolve(kw: dict[str, Any]) -> Target:
    """Pop the endpoint options from ``kw`` and work out where and as whom to talk.

    Raises:
        ConfigError: no credential and no mesh context.
        MeshS3Error: the coordinator refused or is unreachable.
    """
    endpoint, ak, sk = kw.pop("endpoint_url"), kw.pop("access_key"), kw.pop("secret_key")
    region, ca_file, ctx_name = kw.pop("region"), kw.pop("ca_file"), kw.pop("context_name")
    ssl_ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None
    if ak and sk and endpoint:
        return Target(endpoint, ak, sk, region or DEFAULT_REGION, ssl_ctx, ca_file or "")
    ctx = _context(ctx_name)
    if ctx is None:
        if not (ak and sk):
            raise ConfigError(
                "no S3 credential: join a mesh (then `tunnelmesh s3 credentials`), or pass "
                "--access-key/--secret-key (TUNNELMESH_S3_ACCESS_KEY/TUNNELMESH_S3_SECRET_KEY)"
            )
        return Target(
            endpoint or DEFAULT_ENDPOINT, ak, sk, region or DEFAULT_REGION, ssl_ctx, ca_file or ""
        )
    from tunnelmesh_s3 import meshclient

    principal = ""
    if ak and sk:
        info = await meshclient.fetch_info(ctx)
        mesh_endpoint, mesh_region = info.endpoint, info.region
    else:
        cred = await meshclient.fetch_credential(ctx)
        ak, sk, principal = cred.access_key, cred.secret_key, cred.principal
        mesh_endpoint, mesh_region = cred.endpoint, cred.region
    if not endpoint and not mesh_endpoint:
        raise ConfigError("the mesh's S3 service is not listening yet; try again in a moment")
    if ssl_ctx is None:
        ssl_ctx = meshclient.mesh_ssl_context(ctx)
    elif ctx.ca_path:
        ssl_ctx.load_verify_locations(cafile=ctx.ca_path)
    return Target(
        endpoint or mesh_endpoint,
        ak,
        sk,
        region or mesh_region,
        ssl_ctx,
        ca_file or ctx.ca_path,
        ctx,
        principal,
    )


def make_client(target: Target) -> S3Client:
    return S3Client(
        target.endpoint,
        target.access_key,
        target.secret_key,
        region=target.region,
        ssl_context=target.ssl,
    )


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def with_client(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Run an async command body with a connected :class:`S3Client` as its first argument."""

    @functools.wraps(fn)
    def wrapper(**kw: Any) -> Any:
        async def main() -> Any:
            client = make_client(await resolve(kw))
            async with client:
                return await fn(client, **kw)

        return run(main())

    return wrapper
