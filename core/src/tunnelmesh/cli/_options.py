"""Options several commands share, as decorators (one definition, one envvar name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

context_option: Callable[[F], F] = click.option(
    "--context",
    "context_name",
    metavar="NAME",
    envvar="TUNNELMESH_CONTEXT",
    show_envvar=True,
    help="Context (default: the active one).",
)


def json_option(help: str = "Print JSON instead of a table.") -> Callable[[F], F]:
    """``--json`` (TUNNELMESH_JSON) into the ``as_json`` parameter."""
    return click.option(
        "--json", "as_json", is_flag=True, envvar="TUNNELMESH_JSON", show_envvar=True, help=help
    )


def config_option(help: str) -> Callable[[F], F]:
    """``-c/--config PATH`` (TUNNELMESH_CONFIG) into the ``config_path`` parameter."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        metavar="PATH",
        envvar="TUNNELMESH_CONFIG",
        show_envvar=True,
        help=help,
    )
