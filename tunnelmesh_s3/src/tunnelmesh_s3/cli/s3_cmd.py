"""``tunnelmesh s3``: run the S3 service standalone, and get credentials."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import click
from tunnelmesh.errors import ConfigError

from tunnelmesh_s3.cli._common import endpoint_options, with_client
from tunnelmesh_s3.client import S3Client


@click.group()
def s3() -> None:
    """S3-compatible object storage: the standalone server and credentials.

    On a mesh the coordinator serves S3 on its mesh IP (port 9000); `tunnelmesh s3 serve` runs the
    same service without a mesh, for development and for pointing S3 tools at it.
    """


@s3.command()
@click.option(
    "--listen",
    default="127.0.0.1:9000",
    show_default=True,
    envvar="TUNNELMESH_S3_LISTEN",
    show_envvar=True,
    help="HOST:PORT to listen on (port 0 picks a free one).",
)
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TUNNELMESH_S3_DATA_DIR",
    show_envvar=True,
    help="Where objects and grants are kept.",
)
@click.option(
    "--access-key",
    required=True,
    envvar="TUNNELMESH_S3_ACCESS_KEY",
    show_envvar=True,
    help="The admin credential's access key.",
)
@click.option(
    "--secret-key",
    required=True,
    envvar="TUNNELMESH_S3_SECRET_KEY",
    show_envvar=True,
    help="The admin credential's secret key.",
)
@click.option(
    "--region",
    default="us-east-1",
    show_default=True,
    envvar="TUNNELMESH_S3_REGION",
    show_envvar=True,
    help="The region clients must sign for.",
)
@click.option(
    "--domain",
    "domains",
    multiple=True,
    default=("localhost",),
    show_default=True,
    envvar="TUNNELMESH_S3_DOMAINS",
    show_envvar=True,
    help="Host name for virtual-host-style addressing (BUCKET.DOMAIN); repeatable.",
)
def serve(
    listen: str,
    data_dir: Path,
    access_key: str,
    secret_key: str,
    region: str,
    domains: tuple[str, ...],
) -> None:
    """Serve the S3 API from a local directory, without a mesh.

    Path-style (http://HOST:PORT/BUCKET/KEY) and virtual-host-style (http://BUCKET.DOMAIN:PORT/KEY)
    addressing both work. The given credential is the admin; issue more with
    `tunnelmesh s3 credentials --for NAME`. Stops cleanly on Ctrl-C or SIGTERM.
    """
    from tunnelmesh_s3.server import serve as serve_s3

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with serve_s3(
            data_dir,
            listen=listen,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            domains=domains,
        ) as running:
            click.echo(f"tunnelmesh s3: serving {data_dir} on {running.endpoint} (region {region})")
            sys.stdout.flush()
            await stop.wait()

    asyncio.run(main())


@s3.command()
@endpoint_options
@click.option(
    "--for",
    "principal",
    metavar="NAME",
    envvar="TUNNELMESH_S3_CREDENTIALS_FOR",
    show_envvar=True,
    help="Issue a new credential for this peer name (needs an admin credential).",
)
@click.option(
    "--admin",
    "make_admin",
    is_flag=True,
    envvar="TUNNELMESH_S3_CREDENTIALS_ADMIN",
    show_envvar=True,
    help="Make the new credential an admin.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="TUNNELMESH_JSON",
    show_envvar=True,
    help="Print JSON.",
)
@with_client
async def credentials(
    client: S3Client, principal: str | None, make_admin: bool, as_json: bool
) -> None:
    """Show who the credential is, or issue a credential for a peer.

    Secrets are random and shown once; nobody can derive them from public data. On a mesh the
    coordinator will issue each peer its own key (not available in standalone mode).
    """
    if principal is None:
        if make_admin:
            raise ConfigError("--admin needs --for NAME")
        me: Any = await client.admin("GET", "whoami")
        click.echo(
            json.dumps(me) if as_json else f"{me['principal']}{' (admin)' if me['admin'] else ''}"
        )
        return
    cred = await client.admin("POST", "credentials", {"principal": principal, "admin": make_admin})
    if as_json:
        click.echo(json.dumps(cred))
        return
    click.echo(
        f"# credential for {cred['principal']}{' (admin)' if cred['admin'] else ''}; the secret is shown once"
    )
    for prefix in ("TUNNELMESH_S3", "AWS"):
        akey = "ACCESS_KEY" if prefix == "TUNNELMESH_S3" else "ACCESS_KEY_ID"
        skey = "SECRET_KEY" if prefix == "TUNNELMESH_S3" else "SECRET_ACCESS_KEY"
        click.echo(f"export {prefix}_{akey}={cred['access_key']}")
        click.echo(f"export {prefix}_{skey}={cred['secret_key']}")
