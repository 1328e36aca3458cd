"""``tunnelmesh cleanup``: undo what a node killed without stopping left behind."""

from __future__ import annotations

import click

from tunnelmesh.cli._options import config_option
from tunnelmesh.cli._root import Context


@click.command()
@config_option("The node's config (peer.yaml; with --mode serve: server.yaml, its join_mesh:).")
@click.option(
    "--mode",
    type=click.Choice(["join", "serve"]),
    default="join",
    show_default=True,
    envvar="TUNNELMESH_MODE",
    show_envvar=True,
    help="Whose leftovers: a `join` node's, or the coordinator's own node (`serve`).",
)
@click.pass_obj
def cleanup(ctx: Context, config_path: str | None, mode: str) -> None:
    """Remove the routes, nftables table, ip_forward and resolver changes a crashed node left.

    A node killed with SIGKILL (or by the OOM killer) cannot undo its exit routes (proto 211),
    the exit's NAT table and ip_forward, or a swapped /etc/resolv.conf. This does, with the
    same code the node runs at its next start; the systemd unit runs it after every stop
    (ExecStopPost). A running node is left alone (its control socket answers).
    """
    from tunnelmesh.config import PeerConfig, load_peer_config, load_server_config
    from tunnelmesh.service.cleanup import cleanup as do_cleanup

    path = config_path or ctx.config
    cfg: PeerConfig | None
    if mode == "serve":
        server = load_server_config(path, ctx.pm.build_registry().config_sections)
        cfg = (
            None
            if server.join_mesh is None
            else PeerConfig(
                **{f: getattr(server.join_mesh, f) for f in server.join_mesh.__struct_fields__}
            )
        )
        mesh = server.mesh_cidr
    else:
        cfg = load_peer_config(path, ctx.pm.build_registry().config_sections)
        mesh = "0.0.0.0/0"
    if cfg is None:
        click.echo("cleanup: the coordinator runs no node (no join_mesh:): nothing to undo")
        return
    done = do_cleanup(cfg, mesh_cidr=mesh)
    for line in done:
        click.echo(f"cleanup: {line}")
    if not done:
        click.echo("cleanup: nothing left behind")
