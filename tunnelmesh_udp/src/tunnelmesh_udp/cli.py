"""``tunnelmesh udp ...`` commands."""

from __future__ import annotations

import click


@click.group()
def udp() -> None:
    """The WireGuard-compatible UDP transport."""


@udp.command("up")
@click.argument(
    "config", type=click.Path(exists=True, dir_okay=False), envvar="TUNNELMESH_UDP_CONFIG"
)
def up(config: str) -> None:
    """Run a statically configured node (a wg-style CONFIG file; env TUNNELMESH_UDP_CONFIG)."""
    from tunnelmesh_udp.static import main

    main([config])
