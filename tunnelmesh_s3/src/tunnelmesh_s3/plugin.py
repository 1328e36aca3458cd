"""Hook implementations of the ``s3`` plugin (nothing else lives here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    import click
    from aiohttp import web
    from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_commands(cli: click.Group) -> None:
    from tunnelmesh_s3.cli import buckets, s3, share

    for command in (s3, buckets, share):
        cli.add_command(command)


@hookimpl
def tunnelmesh_register_config_sections(registry: Registry) -> None:
    from tunnelmesh_s3.config import S3Section

    registry.add_config_section("s3", S3Section, server=True, peer=False)


@hookimpl
def tunnelmesh_register_coordinator_routes(app: web.Application, coordinator: Any) -> None:
    """With ``s3: {enabled: true}``: the S3 service and the per-peer credentials routes."""
    from tunnelmesh_s3.mesh import install

    install(app, coordinator)
