"""``tunnelmesh context``: list, switch, show and delete the meshes this machine joined."""

from __future__ import annotations

import json

import click
import msgspec

from tunnelmesh.cli._table import echo_table
from tunnelmesh.control.contexts import ContextStore


@click.group()
def context() -> None:
    """Manage contexts: one per mesh joined (stored in ~/.tunnelmesh/contexts.json;
    TUNNELMESH_HOME moves it)."""


@context.command("list")
def list_() -> None:
    """List contexts; the active one is marked with '*'."""
    store = ContextStore()
    names = store.names()
    if not names:
        click.echo("no contexts; join a mesh with: tunnelmesh join --server URL --token-file FILE")
        return
    rows = [("", "NAME", "SERVER", "PEER", "MESH IP")]
    for n in names:
        c = store.get(n)
        rows.append(("*" if n == store.active else "", n, c.server, c.peer_name, c.mesh_ip))
    echo_table(rows)


@context.command()
@click.argument("name")
def use(name: str) -> None:
    """Make NAME the active context."""
    store = ContextStore()
    store.use(name)
    click.echo(f"active context: {name}")


@context.command()
@click.argument("name", required=False)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="TUNNELMESH_JSON",
    show_envvar=True,
    help="Print JSON.",
)
def show(name: str | None, as_json: bool) -> None:
    """Show a context (default: the active one); secrets are not printed."""
    store = ContextStore()
    c = store.get(name)
    data = msgspec.to_builtins(c)
    for secret in ("session_token",):
        data[secret] = "(set)" if data.get(secret) else ""
    data["active"] = c.name == store.active
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for k, v in data.items():
        click.echo(f"{k + ':':<17}{v}")


@context.command()
@click.argument("name")
def delete(name: str) -> None:
    """Forget context NAME locally (does not leave the mesh: use `tunnelmesh leave`)."""
    store = ContextStore()
    store.delete(name)
    click.echo(f"deleted context {name!r}")
