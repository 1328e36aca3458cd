"""``tunnelmesh serve``: run the coordination server."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

import click
import msgspec

from tunnelmesh.cli._loop import run_fast
from tunnelmesh.cli._options import config_option
from tunnelmesh.cli._root import Context, apply_config_log_level
from tunnelmesh.config import ServerConfig, load_server_config
from tunnelmesh.coordinator.ca import ca_fingerprint
from tunnelmesh.errors import TunnelmeshError
from tunnelmesh.service import sdnotify


def _reload(server: Any, load: Callable[[], ServerConfig]) -> None:
    """SIGHUP: re-read server.yaml and apply what may change at run time."""
    try:
        cfg = load()
    except TunnelmeshError as exc:
        click.echo(f"config reload failed, keeping the running config: {exc}", err=True)
        return
    changed = server.reload(cfg)
    click.echo(f"config reloaded: {', '.join(changed) or 'nothing changed'}")


async def _serve(
    cfg: ServerConfig,
    pm: object,
    duration: float | None,
    node: bool,
    load: Callable[[], ServerConfig] | None = None,
) -> None:
    from tunnelmesh.coordinator.server import CoordinatorServer

    server = CoordinatorServer(cfg, pm=pm, node=node, notify=click.echo)
    await server.start()
    try:
        assert server.coordinator.ca is not None
        api, stun = server.bound()
        every = " (every address of this host)" if server.wildcard else ""
        click.echo(f"coordinator listening on {api}{every}, STUN on udp {stun}")
        click.echo(f"peers join with --server {' or '.join(server.peer_urls())}")
        click.echo(f"mesh CA SHA-256 fingerprint {ca_fingerprint(server.coordinator.ca.cert_pem)}")
        click.echo(
            f"state in {server.coordinator.data_dir}; {len(server.coordinator.peers)} peers",
            nl=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if load is not None:
            loop.add_signal_handler(signal.SIGHUP, _reload, server, load)
        if server.own_peer_ready is not None:
            # join_mesh: the coordinator's own peer must come up, or serve stops with its error.
            waiter = asyncio.ensure_future(stop.wait())
            both: set[asyncio.Future[Any]] = {server.own_peer_ready, waiter}
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if server.own_peer_ready.done():
                click.echo(server.own_peer_ready.result())
        # systemd (Type=notify): ready now; the watchdog is fed while the loop turns
        sdnotify.notify("READY=1", f"STATUS=coordinator listening on {server.url}")
        dog = asyncio.ensure_future(sdnotify.watchdog(lambda: True))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        finally:
            dog.cancel()
            sdnotify.notify("STOPPING=1")
    finally:
        await server.stop()
        click.echo("coordinator stopped")


@click.command()
@config_option("Server config (default: ./server.yaml).")
@click.option(
    "--data-dir",
    metavar="DIR",
    envvar="TUNNELMESH_DATA_DIR",
    show_envvar=True,
    help="State directory (SQLite database, CA); overrides data_dir.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    envvar="TUNNELMESH_LISTEN",
    show_envvar=True,
    help="HTTPS API address; overrides listen (default 0.0.0.0:8443).",
)
@click.option(
    "--stun-listen",
    metavar="HOST:PORT",
    envvar="TUNNELMESH_STUN_LISTEN",
    show_envvar=True,
    help="STUN UDP address; overrides stun_listen (default :3478).",
)
@click.option(
    "--no-tun",
    is_flag=True,
    envvar="TUNNELMESH_NO_TUN",
    show_envvar=True,
    help="With join_mesh: run the coordinator's own peer as a control client only (no TUN, "
    "no transports, no root needed).",
)
@click.option(
    "--duration",
    type=float,
    metavar="SECONDS",
    envvar="TUNNELMESH_DURATION",
    show_envvar=True,
    help="Stop after this many seconds (tests); default: until a signal.",
)
@click.pass_obj
def serve(
    ctx: Context,
    config_path: str | None,
    data_dir: str | None,
    listen: str | None,
    stun_listen: str | None,
    no_tun: bool,
    duration: float | None,
) -> None:
    """Run the coordination server until SIGINT/SIGTERM; SIGHUP re-reads the config.

    The coordinator allocates mesh IPs, keeps the peer list and DNS records, pushes changes to
    every peer over a WebSocket, and answers STUN so peers learn their public address. It never
    routes mesh traffic. At first start it creates the mesh CA in the state directory; a restart
    with the same directory keeps every name and IP.

    With a join_mesh: section the coordinator is also a mesh peer (server-as-client): a full
    node like `tunnelmesh join` runs (TUN with a mesh IP, transports, DNS, filter, exit
    settings from join_mesh; needs root), reachable as this.tunnelmesh / this.tm. With
    --no-tun, or when no transport plugin is installed, that peer runs the control plane only.

    SIGHUP re-reads the config file and applies admin_peers (an entry removed demotes that
    peer at once) and the filter rules (pushed to every peer at
    once); an invalid file is reported and the running config kept.
    """
    registry = ctx.pm.build_registry()

    def load() -> ServerConfig:
        cfg = load_server_config(config_path or ctx.config, registry.config_sections)
        changes = {
            k: v
            for k, v in (("data_dir", data_dir), ("listen", listen), ("stun_listen", stun_listen))
            if v
        }
        return msgspec.structs.replace(cfg, **changes) if changes else cfg

    cfg = load()
    apply_config_log_level(cfg.log_level)
    node = False
    if cfg.join_mesh is not None and not no_tun:
        if registry.transports:
            from tunnelmesh.errors import TunnelmeshError
            from tunnelmesh.node import can_create_tun

            why = can_create_tun()
            if why is not None:
                raise TunnelmeshError(
                    f"join_mesh: {why} (or pass --no-tun for a control-plane-only peer)"
                )
            node = True
        else:
            click.echo(
                "join_mesh: no transport plugin is loaded: the coordinator's peer runs the "
                "control plane only",
                err=True,
            )
    if node:  # the coordinator's own peer forwards packets: on uvloop, as a joined peer
        run_fast(_serve(cfg, ctx.pm, duration, node, load))
    else:
        asyncio.run(_serve(cfg, ctx.pm, duration, node, load))
