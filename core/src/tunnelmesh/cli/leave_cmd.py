"""``tunnelmesh leave``: remove this node from the mesh and forget the context."""

from __future__ import annotations

import asyncio

import click

from tunnelmesh.control.contexts import ContextStore
from tunnelmesh.errors import TunnelmeshError


@click.command()
@click.option(
    "--context",
    "context_name",
    metavar="NAME",
    envvar="TUNNELMESH_CONTEXT",
    show_envvar=True,
    help="Context to leave (default: the active one).",
)
@click.option(
    "--keep-context",
    is_flag=True,
    envvar="TUNNELMESH_KEEP_CONTEXT",
    show_envvar=True,
    help="Keep the context file entry (default: delete it).",
)
def leave(context_name: str | None, keep_context: bool) -> None:
    """Leave the mesh: the coordinator frees this node's mesh IP.

    The name stays reserved for this node's key: joining again with the same key takes it back
    (and the same IP if it is still free); another key gets it only after an admin runs
    `tunnelmesh peers release NAME`. A key that left needs the mesh join token to join again.
    Also removes the mesh CA from the system trust store if `join` installed it.
    """
    from tunnelmesh.control import daemon, trust

    store = ContextStore()
    ctx = store.get(context_name)

    async def main() -> None:
        client = daemon.client_for(ctx, store)
        async with client:
            await client.leave()

    asyncio.run(main())
    click.echo(
        f"{ctx.peer_name} left {ctx.server}; {ctx.mesh_ip} is free, the name stays this key's"
    )
    if ctx.trusted_ca_path:
        try:
            trust.remove_ca(ctx.trusted_ca_path)
            click.echo(f"removed the mesh CA {ctx.trusted_ca_path}")
        except TunnelmeshError as exc:
            click.echo(f"warning: {exc}", err=True)
    if not keep_context:
        store.delete(ctx.name)
        click.echo(f"deleted context {ctx.name!r}")
