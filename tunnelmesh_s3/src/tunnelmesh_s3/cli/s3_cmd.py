"""``tunnelmesh s3``: run the S3 service standalone, and get credentials."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import click
import msgspec
from tunnelmesh.errors import ConfigError

from tunnelmesh_s3.cli._common import endpoint_options


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
    default=None,
    envvar="TUNNELMESH_S3_SECRET_KEY",
    show_envvar=True,
    help="The admin credential's secret key. On the command line other local users can read "
    "it in the process list: prefer the environment variable or --secret-file.",
)
@click.option(
    "--secret-file",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TUNNELMESH_S3_SECRET_FILE",
    show_envvar=True,
    help="Read the admin secret key from this file (its first line).",
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
    secret_key: str | None,
    secret_file: Path | None,
    region: str,
    domains: tuple[str, ...],
) -> None:
    """Serve the S3 API from a local directory, without a mesh.

    Path-style (http://HOST:PORT/BUCKET/KEY) and virtual-host-style (http://BUCKET.DOMAIN:PORT/KEY)
    addressing both work. The given credential is the admin; issue more with
    `tunnelmesh s3 credentials --for NAME`. The secret key comes from --secret-file,
    TUNNELMESH_S3_SECRET_KEY or --secret-key, and is never printed or logged. Stops cleanly on
    Ctrl-C or SIGTERM.
    """
    from tunnelmesh_s3.server import serve as serve_s3

    secret_key = _admin_secret(secret_key, secret_file)

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


def _admin_secret(secret_key: str | None, secret_file: Path | None) -> str:
    """The admin secret from exactly one of ``--secret-key`` / ``--secret-file``.

    Raises:
        click.UsageError: neither or both given.
        ConfigError: the file cannot be read or is empty.
    """
    if secret_file is not None and secret_key is not None:
        raise click.UsageError(
            "give the secret once: --secret-file or --secret-key (TUNNELMESH_S3_SECRET_KEY)"
        )
    if secret_file is not None:
        try:
            text = secret_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"cannot read the secret file: {why}", path=str(secret_file)
            ) from None
        lines = text.splitlines()
        secret = lines[0].strip() if lines else ""
        if not secret:
            raise ConfigError("the secret file is empty", path=str(secret_file))
        if secret_file.stat().st_mode & 0o077:
            click.echo(
                f"warning: {secret_file} is readable by other users; chmod 600 {secret_file}",
                err=True,
            )
        return secret
    if not secret_key:
        raise click.UsageError(
            "no admin secret: pass --secret-file FILE, or set TUNNELMESH_S3_SECRET_KEY"
        )
    source = click.get_current_context().get_parameter_source("secret_key")
    if source == click.core.ParameterSource.COMMANDLINE:
        click.echo(
            "warning: --secret-key on the command line is visible to other local users in the "
            "process list; use --secret-file or TUNNELMESH_S3_SECRET_KEY",
            err=True,
        )
    return secret_key


def _rclone(endpoint: str, region: str, ak: str, sk: str, remote: str = "tunnelmesh") -> str:
    return (
        f"[{remote}]\ntype = s3\nprovider = Other\nendpoint = {endpoint}\nregion = {region}\n"
        f"access_key_id = {ak}\nsecret_access_key = {sk}\n"
    )


def _env(endpoint: str, region: str, ak: str, sk: str, ca_path: str) -> str:
    lines = [
        f"export AWS_ACCESS_KEY_ID={ak}",
        f"export AWS_SECRET_ACCESS_KEY={sk}",
        f"export AWS_DEFAULT_REGION={region}",
        f"export AWS_ENDPOINT_URL={endpoint}",
    ]
    if ca_path:
        lines.append(f"export AWS_CA_BUNDLE={ca_path}")
    return "\n".join(lines) + "\n"


@s3.command()
@endpoint_options
@click.option(
    "--for",
    "principal",
    metavar="NAME",
    envvar="TUNNELMESH_S3_CREDENTIALS_FOR",
    show_envvar=True,
    help="Standalone server: issue a new credential for this name (needs an admin credential).",
)
@click.option(
    "--admin",
    "make_admin",
    is_flag=True,
    envvar="TUNNELMESH_S3_CREDENTIALS_ADMIN",
    show_envvar=True,
    help="Standalone server: make the new credential an admin.",
)
@click.option(
    "--rotate",
    is_flag=True,
    envvar="TUNNELMESH_S3_ROTATE",
    show_envvar=True,
    help="On a mesh: replace this peer's key with a new one (the old one stops working).",
)
@click.option(
    "--revoke",
    is_flag=True,
    envvar="TUNNELMESH_S3_REVOKE",
    show_envvar=True,
    help="On a mesh: revoke this peer's keys.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["all", "env", "rclone", "json"]),
    default="all",
    show_default=True,
    envvar="TUNNELMESH_S3_FORMAT",
    show_envvar=True,
    help="env: shell exports (aws CLI, boto3); rclone: a remote for rclone.conf; json.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="TUNNELMESH_JSON",
    show_envvar=True,
    help="Print JSON (same as --format json).",
)
def credentials(
    principal: str | None,
    make_admin: bool,
    rotate: bool,
    revoke: bool,
    fmt: str,
    as_json: bool,
    **kw: Any,
) -> None:
    """This peer's own S3 credential on the mesh, in forms for aws, boto3 and rclone.

    On a mesh (after `tunnelmesh join`) the coordinator gives each peer its own access key and
    a random secret, nobody can derive it from public data; running this again prints the same
    key until --rotate. The mesh CA is trusted for the endpoint (AWS_CA_BUNDLE).

    With --endpoint-url and a credential (standalone `tunnelmesh s3 serve`): show who that
    credential is, or issue one for another name with --for (admins).
    """
    if as_json:
        fmt = "json"
    explicit = bool(kw["access_key"] and kw["secret_key"])
    if principal is not None or explicit:
        if rotate or revoke:
            raise ConfigError("--rotate/--revoke are for a peer's own key on a mesh")
        _run(_standalone(kw, principal, make_admin, fmt))
        return
    if make_admin:
        raise ConfigError("--admin needs --for NAME (standalone server)")
    _run(_mesh(kw, rotate, revoke, fmt))


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _mesh(kw: dict[str, Any], rotate: bool, revoke: bool, fmt: str) -> None:
    from tunnelmesh_s3 import meshclient

    ctx = meshclient.load_context(kw["context_name"])
    if revoke:
        n = await meshclient.revoke(ctx)
        click.echo(f"revoked {n} S3 key(s) of {ctx.peer_name}")
        return
    cred = await meshclient.fetch_credential(ctx, rotate=rotate)
    endpoint = kw["endpoint_url"] or cred.endpoint
    region = kw["region"] or cred.region
    if fmt == "json":
        data = msgspec.structs.asdict(cred)
        data.update(endpoint=endpoint, region=region, ca_path=ctx.ca_path, context=ctx.name)
        click.echo(json.dumps(data))
        return
    env = _env(endpoint, region, cred.access_key, cred.secret_key, ctx.ca_path)
    rclone = _rclone(endpoint, region, cred.access_key, cred.secret_key)
    if fmt == "env":
        click.echo(env, nl=False)
        return
    if fmt == "rclone":
        click.echo(rclone, nl=False)
        return
    admin = " (admin)" if cred.admin else ""
    click.echo(f"# S3 credential of {cred.principal}{admin} on mesh {ctx.name}")
    if not endpoint:
        click.echo("# the coordinator's S3 service is not listening yet")
    click.echo("# shell (aws CLI, boto3, tunnelmesh buckets):")
    click.echo(env, nl=False)
    click.echo(f"\n# rclone.conf (run rclone with --ca-cert {ctx.ca_path} unless the mesh CA")
    click.echo("# is in the system trust store, and without AWS_CA_BUNDLE in its environment):")
    click.echo(rclone, nl=False)


async def _standalone(
    kw: dict[str, Any], principal: str | None, make_admin: bool, fmt: str
) -> None:
    from tunnelmesh_s3.cli._common import make_client, resolve

    target = await resolve(kw)
    async with make_client(target) as client:
        if principal is None:
            me: Any = await client.admin("GET", "whoami")
            click.echo(
                json.dumps(me)
                if fmt == "json"
                else f"{me['principal']}{' (admin)' if me['admin'] else ''}"
            )
            return
        cred = await client.admin(
            "POST", "credentials", {"principal": principal, "admin": make_admin}
        )
    if fmt == "json":
        click.echo(json.dumps(cred))
        return
    ak, sk = cred["access_key"], cred["secret_key"]
    env = _env(target.endpoint, target.region, ak, sk, target.ca_path)
    rclone = _rclone(target.endpoint, target.region, ak, sk)
    if fmt in ("env", "rclone"):
        click.echo(env if fmt == "env" else rclone, nl=False)
        return
    admin = " (admin)" if cred["admin"] else ""
    click.echo(f"# credential for {cred['principal']}{admin}; the secret is shown once")
    click.echo(f"export TUNNELMESH_S3_ACCESS_KEY={ak}")
    click.echo(f"export TUNNELMESH_S3_SECRET_KEY={sk}")
    click.echo(env, nl=False)
    click.echo()
    click.echo(rclone, nl=False)
