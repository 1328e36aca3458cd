"""``tunnelmesh peers``: the mesh's peers as a table; ``peers delete|release`` for admins."""

from __future__ import annotations

import asyncio
import json
import time

import click
import msgspec

from tunnelmesh.cli._api import api_call
from tunnelmesh.cli._options import context_option, json_option
from tunnelmesh.cli._table import echo_table
from tunnelmesh.control.contexts import Context as MeshContext
from tunnelmesh.control.contexts import ContextStore
from tunnelmesh.control.messages import ClientInfo, PeerInfo


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def ago(ts: float, now: float) -> str:
    if not ts:
        return "never"
    s = max(0.0, now - ts)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    if s < 86400:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


def fetch_peers(ctx: MeshContext, store: ContextStore) -> tuple[list[PeerInfo], bool]:
    """The peer list from the coordinator; from the local cache when it is unreachable.

    Returns:
        The peers and whether the coordinator answered.
    """
    peers, _, live = fetch_mesh(ctx, store)
    return peers, live


def fetch_mesh(
    ctx: MeshContext, store: ContextStore
) -> tuple[list[PeerInfo], list[ClientInfo], bool]:
    """The peer list (and the concentrators' clients) from the coordinator; the peers from the
    local cache when it is unreachable.

    Returns:
        The peers, the clients and whether the coordinator answered.
    """
    from tunnelmesh.control import daemon
    from tunnelmesh.control.client import CoordinatorUnreachable
    from tunnelmesh.control.messages import PeersResponse

    async def main() -> PeersResponse:
        async with daemon.client_for(ctx, store) as client:
            return await asyncio.wait_for(client.list_peers(), 10)

    try:
        got = asyncio.run(main())
        return got.peers, got.clients, True
    except (CoordinatorUnreachable, TimeoutError):
        cache = store.context_dir(ctx.name) / "peers.json"
        try:
            return msgspec.json.decode(cache.read_bytes(), type=list[PeerInfo]), [], False
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return [], [], False


@click.group(invoke_without_command=True)
@context_option
@json_option()
@click.pass_context
def peers(click_ctx: click.Context, context_name: str | None, as_json: bool) -> None:
    """List the mesh's peers: name, mesh IP, online, exit, transport, RTT, traffic, last seen, why.

    --json lists the whole mesh, this node included, each peer with "self" (true for this
    node).

    Subcommands: delete NAME (the peer itself or an admin); transport NAME (show, or as the
    peer itself or an admin set, its transport order); traffic NAME (its rates over the last
    hour or day); for admins: release NAME (free the
    name a departed key held), pending and approve NAME (approve_new_peers).

    EXIT says whether the peer is an exit node (it allows exit traffic: --exit-node NAME).

    Clients of concentrator peers (phones with the WireGuard app: tunnelmesh wg) follow the
    peers, each with its concentrator ("client of NAME"), whether it is active, and its
    latest handshake as the concentrator reported it (`tunnelmesh wg list --json` lists
    them as JSON).

    TRANSPORT, RTT and WHY are this node's view of the path to each peer (as its daemon last
    reported): the transport in use, the median probe RTT on it, and why that transport was
    chosen (e.g. "udp: no answer for 3.1 s; fell back to ssh"). TRAFFIC is what each peer
    reported sending/receiving. When the coordinator is unreachable the last known list is
    shown and marked as such.
    """
    if click_ctx.invoked_subcommand is not None:
        return
    store = ContextStore()
    ctx = store.get(context_name)
    rows, clients, live = fetch_mesh(ctx, store)
    me = next((p for p in rows if p.peer_id == ctx.peer_id), None)
    others = [p for p in rows if p.peer_id != ctx.peer_id]
    if as_json:  # the whole mesh, this node included and marked "self"
        listed = [{**msgspec.to_builtins(p), "self": p.peer_id == ctx.peer_id} for p in rows]
        click.echo(json.dumps(listed, indent=2))
        return
    if not live:
        click.echo("coordinator unreachable: showing the last known peers", err=True)
    if not others and not clients:
        click.echo("no other peers")
        return
    now = time.time()
    table: list[tuple[str, ...]] = [
        ("NAME", "MESH IP", "ONLINE", "EXIT", "TRANSPORT", "RTT", "TRAFFIC (TX/RX)", "LAST SEEN",
         "WHY")
    ]  # fmt: skip
    for p in others:
        transport = me.transports.get(p.name, "-") if me else "-"
        rtt = me.rtt_ms.get(p.name) if me else None
        why = me.reasons.get(p.name, "-") if me else "-"
        table.append(
            (
                p.name,
                p.mesh_ip,
                "yes" if p.online else "no",
                "yes" if p.allow_exit_traffic else "-",
                transport,
                f"{rtt:.1f} ms" if rtt is not None else "-",
                f"{human_bytes(p.counters.bytes_sent)} / {human_bytes(p.counters.bytes_received)}",
                ago(p.last_seen, now),
                why,
            )
        )
    echo_table(table)
    if clients:
        names = {p.peer_id: p.name for p in rows}
        click.echo()
        echo_table(_client_rows(clients, names, now))


def _client_rows(
    clients: list[ClientInfo], names: dict[str, str], now: float
) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = [
        ("CLIENT", "MESH IP", "CONCENTRATOR", "STATE", "TRAFFIC (RX/TX)", "LAST HANDSHAKE")
    ]
    for c in clients:
        st = c.status
        table.append(
            (
                c.name,
                c.mesh_ip,
                names.get(c.concentrator, c.concentrator),
                "active" if c.active else ("disabled" if not c.enabled else "expired"),
                f"{human_bytes(st.rx_bytes)} / {human_bytes(st.tx_bytes)}" if st else "-",
                ago(st.latest_handshake if st else 0.0, now),
            )
        )
    return table


@peers.command()
@context_option
@click.argument("name")
def delete(context_name: str | None, name: str) -> None:
    """Remove peer NAME from the mesh (itself or an admin).

    Its mesh IP is freed; its name stays reserved for its key (see `peers release`).
    """
    api_call(context_name, "DELETE", f"/api/v1/peers/{name}")
    click.echo(f"deleted peer {name}; the name stays reserved for its key")


@peers.command()
@context_option
@click.argument("name")
def release(context_name: str | None, name: str) -> None:
    """Free NAME, reserved for a key that left, so another key may take it (admins only).

    Names belong to keys: after a peer leaves or is deleted its name stays reserved for its
    key, and only this frees it. A name a registered peer holds is refused (delete it first).
    """
    got = api_call(context_name, "DELETE", f"/api/v1/names/{name}")
    click.echo(f"released {name} (was reserved for peer {got['peer_id']})")


@peers.command()
@context_option
@click.argument("name")
def approve(context_name: str | None, name: str) -> None:
    """Admit NAME, a new key waiting for approval (approve_new_peers; admins only).

    The waiting `tunnelmesh join` notices within seconds and comes up.
    """
    got = api_call(context_name, "POST", f"/api/v1/peers/{name}/approve")
    click.echo(f"approved {name} (peer ID {got['peer_id']})")


@peers.command()
@context_option
@json_option()
def pending(context_name: str | None, as_json: bool) -> None:
    """List the keys waiting for approval: name, peer ID, key fingerprint (admins only).

    Compare the fingerprint with `ssh-keygen -lf ~/.tunnelmesh/id_ed25519.pub` on the new
    machine before approving it.
    """
    rows = api_call(context_name, "GET", "/api/v1/pending")["pending"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no key waits for approval")
    for r in rows:
        click.echo(f"{r['name']}  {r['peer_id']}  {r['fingerprint']}")


@peers.command()
@context_option
@json_option()
@click.argument("name")
@click.option(
    "--order",
    metavar="T1,T2,...",
    envvar="TUNNELMESH_TRANSPORT_ORDER",
    show_envvar=True,
    help="Set NAME's transport order, most preferred first (e.g. udp,relay).",
)
@click.option(
    "--force",
    metavar="TRANSPORT",
    envvar="TUNNELMESH_TRANSPORT_FORCE",
    show_envvar=True,
    help="Use only this transport (e.g. relay).",
)
@click.option(
    "--clear",
    is_flag=True,
    envvar="TUNNELMESH_TRANSPORT_CLEAR",
    show_envvar=True,
    help="Back to the node's own order (its peer.yaml).",
)
def transport(
    context_name: str | None,
    as_json: bool,
    name: str,
    order: str | None,
    force: str | None,
    clear: bool,
) -> None:
    """Show or set the transport order of peer NAME (setting: the peer itself or an admin).

    The coordinator keeps the order and pushes it to NAME's node, which re-selects its paths
    at once, without a restart; `tunnelmesh peers` shows the transport in use within
    seconds. Without an option, shows the order set, the order in force on the node and the
    transport it uses towards each peer.
    """
    given = [x for x in (order is not None, force is not None, clear) if x]
    if len(given) > 1:
        raise click.UsageError("give one of --order, --force and --clear")
    path = f"/api/v1/peers/{name}/transport"
    if clear:
        got = api_call(context_name, "DELETE", path)
    elif force is not None:
        got = api_call(context_name, "PUT", path, {"force": force})
    elif order is not None:
        names = [n.strip() for n in order.split(",") if n.strip()]
        got = api_call(context_name, "PUT", path, {"order": names})
    else:
        got = api_call(context_name, "GET", path)
    if as_json:
        click.echo(json.dumps(got, indent=2))
        return
    set_ = ",".join(got["order"]) or "none (the node's own)"
    click.echo(f"{got['name']}: order set {set_}")
    in_force = ",".join(got["effective_order"]) or "not reported yet"
    click.echo(f"in force on the node: {in_force}")
    for peer, t in sorted(got["transports"].items()):
        click.echo(f"  {peer}: {t}")


@peers.command()
@context_option
@json_option()
@click.argument("name")
@click.option(
    "--span",
    type=click.Choice(["hour", "day"]),
    default="hour",
    show_default=True,
    envvar="TUNNELMESH_TRAFFIC_SPAN",
    show_envvar=True,
    help="The last hour in 10-second steps, or the last day in 5-minute steps.",
)
def traffic(context_name: str | None, as_json: bool, name: str, span: str) -> None:
    """Receive and transmit rates of peer NAME over time, as the coordinator keeps them from
    its heartbeats (what the dashboard's chart shows)."""
    got = api_call(context_name, "GET", f"/api/v1/peers/{name}/traffic?span={span}")
    if as_json:
        click.echo(json.dumps(got, indent=2))
        return
    if not got["points"]:
        click.echo(f"{got['name']}: no traffic history yet")
        return
    click.echo(f"{'TIME':<19}  {'RX/s':>10}  {'TX/s':>10}")
    for t, rx, tx in got["points"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
        click.echo(f"{when:<19}  {human_bytes(int(rx)):>10}  {human_bytes(int(tx)):>10}")
