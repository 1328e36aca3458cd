"""``tunnelmesh serve``: run the coordination server."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click
import msgspec

from tunnelmesh.cli._root import Context
from tunnelmesh.config import ServerConfig, load_server_config
from tunnelmesh.coordinator.ca import ca_fingerprint


async def _serve(cfg: ServerConfig, pm: object, duration: float | None) -> None:
    from tunnelmesh.coordinator.server import CoordinatorServer

    server = CoordinatorServer(cfg, pm=pm)
    await server.start()
    try:
        assert server.coordinator.ca is not None
        click.echo(f"coordinator listening on {server.url} (STUN udp port {server.stun_port})")
        click.echo(f"mesh CA SHA-256 fingerprint {ca_fingerprint(server.coordinator.ca.cert_pem)}")
        click.echo(
            f"state in {server.coordinator.data_dir}; {len(server.coordinator.peers)} peers",
            nl=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        await server.stop()
        click.echo("coordinator stopped")


@click.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="PATH",
    envvar="TUNNELMESH_CONFIG",
    show_envvar=True,
    help="Server config (default: ./server.yaml).",
)
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
    duration: float | None,
) -> None:
    """Run the coordination server until SIGINT/SIGTERM.

    The coordinator allocates mesh IPs, keeps the peer list and DNS records, pushes changes to
    every peer over a WebSocket, and answers STUN so peers learn their public address. It never
    routes mesh traffic. At first start it creates the mesh CA in the state directory; a restart
    with the same directory keeps every name and IP.
    """
    registry = ctx.pm.build_registry()
    cfg = load_server_config(config_path or ctx.config, registry.config_sections)
    changes = {
        k: v
        for k, v in (("data_dir", data_dir), ("listen", listen), ("stun_listen", stun_listen))
        if v
    }
    if changes:
        cfg = msgspec.structs.replace(cfg, **changes)
    asyncio.run(_serve(cfg, ctx.pm, duration))
