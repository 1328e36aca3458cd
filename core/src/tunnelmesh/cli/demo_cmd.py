"""``tunnelmesh demo``: a whole mesh in network namespaces, checked and measured."""

from __future__ import annotations

import click

from tunnelmesh.errors import TunnelmeshError


@click.command()
@click.option(
    "--duration",
    type=float,
    metavar="SECONDS",
    envvar="TUNNELMESH_DEMO_DURATION",
    show_envvar=True,
    help="Keep the mesh up this long after the results, then clean up (default: until Ctrl-C).",
)
@click.option(
    "--transfer-seconds",
    type=click.FloatRange(0.2, 30),
    default=1.0,
    show_default=True,
    envvar="TUNNELMESH_DEMO_TRANSFER_SECONDS",
    show_envvar=True,
    help="Length of the TCP transfer timed for each pair of peers.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    envvar="TUNNELMESH_DEMO_VERBOSE",
    show_envvar=True,
    help="Also show everything the coordinator and the peers print.",
)
def demo(duration: float | None, transfer_seconds: float, verbose: bool) -> None:
    """Run a coordinator and three peers in network namespaces (one behind a NAT).

    Each peer is a real `tunnelmesh join` node with the installed plugins: a TUN device, the
    UDP (WireGuard) transport, the packet filter and the mesh DNS. The demo pings every peer
    from every other by name (<peer>.tunnelmesh) and by mesh IP, times a short TCP transfer per
    pair, prints a table, keeps the mesh up until Ctrl-C or --duration, and then removes every
    namespace, process and file it made. Needs root (network namespaces, TUN, nftables). No
    packet leaves the namespaces.
    """
    import os

    if os.geteuid() != 0:
        raise TunnelmeshError("tunnelmesh demo needs root (network namespaces): run it with sudo")
    from tunnelmesh.testing.demo import run_demo

    code = run_demo(
        duration=duration,
        transfer_seconds=transfer_seconds,
        say=lambda line: click.echo(line),
        verbose=verbose,
    )
    raise SystemExit(code)
