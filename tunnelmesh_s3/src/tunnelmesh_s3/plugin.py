"""Hook implementations of the ``s3`` plugin (nothing else lives here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    import click
    from aiohttp import web
    from tunnelmesh.abc import CoordinatorView
    from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_commands(cli: click.Group) -> None:
    from tunnelmesh.cli.lazy import add_lazy_command  # the command itself is imported on use

    for name, import_path, short_help in (
        (
            "s3",
            "tunnelmesh_s3.cli.s3_cmd:s3",
            "S3-compatible object storage: the standalone server and credentials.",
        ),
        (
            "buckets",
            "tunnelmesh_s3.cli.buckets_cmd:buckets",
            "List, create and delete buckets; list, upload and download objects.",
        ),
        (
            "share",
            "tunnelmesh_s3.cli.share_cmd:share",
            "File shares: a bucket shared with chosen peers, to mount or sync with S3 tools.",
        ),
    ):
        add_lazy_command(cli, name, import_path, short_help)


@hookimpl
def tunnelmesh_register_config_sections(registry: Registry) -> None:
    from tunnelmesh_s3.config import S3Section

    registry.add_config_section("s3", S3Section, server=True, peer=False)


@hookimpl
def tunnelmesh_register_coordinator_routes(
    app: web.Application, coordinator: CoordinatorView
) -> None:
    """With ``s3: {enabled: true}``: the S3 service and the per-peer credentials routes."""
    from tunnelmesh_s3.mesh import install

    install(app, coordinator)


@hookimpl
def tunnelmesh_register_storage(registry: Registry) -> None:
    """The ``filesystem`` backend, the S3 service's default (``s3: {storage: filesystem}``)."""
    from tunnelmesh_s3.filesystem import FilesystemStorage

    registry.add_storage(FilesystemStorage)
