"""Rows printed as a table: columns as wide as their widest cell, two spaces between them."""

from __future__ import annotations

from collections.abc import Sequence

import click

__all__ = ["echo_table", "format_table"]


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first is the header) as lines of padded columns, trailing spaces cut."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def echo_table(rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` with :func:`format_table`."""
    click.echo(format_table(rows))
