"""``tunnelmesh token rotate``: replace the mesh join token (admins)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from tunnelmesh.cli._api import api_call
from tunnelmesh.cli._options import context_option


@click.group("token")
def token_group() -> None:
    """The mesh join token: it lets a new key join, and nothing else."""


@token_group.command()
@context_option
@click.option(
    "--write-to",
    metavar="PATH",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TUNNELMESH_TOKEN_OUTPUT",
    show_envvar=True,
    help="Write the new token to this file (mode 0600) instead of printing it.",
)
def rotate(context_name: str | None, write_to: Path | None) -> None:
    """Replace the mesh join token with a fresh random one (admins only).

    Peers that joined keep working: a registered key re-registers with its signature alone.
    Only new keys need the new token (join --token-file). The coordinator keeps it in its
    state store, so it outlives restarts; server.yaml's auth_token is no longer used.
    """
    answer = api_call(context_name, "POST", "/api/v1/token/rotate")
    token = str(answer["token"])
    if write_to is None:
        click.echo(token)
        return
    fd = os.open(write_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    click.echo(f"new join token written to {write_to}")
