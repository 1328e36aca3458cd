"""``tunnelmesh dns``: the built-in resolver."""

from __future__ import annotations

import click

__all__ = ["dns"]


@click.group("dns")
def dns() -> None:
    """The built-in mesh DNS resolver."""
