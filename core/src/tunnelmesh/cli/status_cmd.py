"""``tunnelmesh status``: this node's place in the mesh."""

from __future__ import annotations

import collections
import json

import click

from tunnelmesh.cli._options import context_option, json_option
from tunnelmesh.cli.peers_cmd import fetch_mesh
from tunnelmesh.control.contexts import ContextStore


@click.command()
@context_option
@json_option("Print JSON instead of text.")
def status(context_name: str | None, as_json: bool) -> None:
    """Show this node's name, mesh IP, whether the coordinator is reachable, how many peers
    are online and which transports are in use; on a WireGuard concentrator (tunnelmesh wg),
    also where its clients dial it and how many of them it serves."""
    store = ContextStore()
    ctx = store.get(context_name)
    rows, clients, live = fetch_mesh(ctx, store)
    me = next((p for p in rows if p.peer_id == ctx.peer_id), None)
    others = [p for p in rows if p.peer_id != ctx.peer_id]
    online = sum(1 for p in others if p.online)
    transports = collections.Counter(me.transports.values()) if me else collections.Counter()
    # the coordinator's word when it answers (admin_peers changes on SIGHUP); else the flag of
    # the last registration
    admin = me.is_admin if me is not None else ctx.is_admin
    info = {
        "context": ctx.name,
        "name": ctx.peer_name,
        "peer_id": ctx.peer_id,
        "mesh_ip": ctx.mesh_ip,
        "dns_name": f"{ctx.peer_name}.{ctx.domain}",
        "coordinator": ctx.server,
        "coordinator_reachable": live,
        "registered": me is not None if live else None,
        "online": me.online if me else None,
        "admin": admin,
        "peers_online": online,
        "peers_total": len(others),
        "transports": dict(transports),
        "concentrator": None,
    }
    if me is not None and me.concentrator_endpoint:
        mine = [c for c in clients if c.concentrator == ctx.peer_id]
        info["concentrator"] = {
            "endpoint": me.concentrator_endpoint,
            "clients": len(mine),
            "active": sum(1 for c in mine if c.active),
        }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    used = ", ".join(f"{k} ({v})" for k, v in sorted(transports.items())) or "none reported"
    click.echo(f"context:      {ctx.name}")
    click.echo(f"name:         {ctx.peer_name} ({info['dns_name']}){' [admin]' if admin else ''}")
    click.echo(f"peer ID:      {ctx.peer_id} (admin_peers takes it)")
    click.echo(f"mesh IP:      {ctx.mesh_ip}")
    click.echo(f"coordinator:  {ctx.server} ({'reachable' if live else 'UNREACHABLE'})")
    if live and me is None:
        click.echo("registered:   NO (this node is not in the mesh; run tunnelmesh join)")
    click.echo(f"peers:        {online} online of {len(others)}")
    click.echo(f"transports:   {used}")
    conc = info["concentrator"]
    if isinstance(conc, dict):
        click.echo(
            f"concentrator: {conc['endpoint']} (WireGuard clients: {conc['active']} active of "
            f"{conc['clients']}; tunnelmesh wg list)"
        )
