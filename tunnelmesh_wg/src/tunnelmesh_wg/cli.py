"""``tunnelmesh wg``: standard WireGuard clients of the mesh's concentrator peers."""

from __future__ import annotations

import click


@click.group("wg")
def wg() -> None:
    """WireGuard clients (phones, laptops) of the mesh's concentrators.

    A client is a mesh citizen with its own mesh IP and DNS name, reached through the
    concentrator peer it connects to. Its private key never leaves the machine where
    `tunnelmesh wg add` runs (or the user's device, with --public-key).
    """
