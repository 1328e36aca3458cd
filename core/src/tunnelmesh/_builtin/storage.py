"""Built-in plugin: the filesystem storage backend (the S3 service's default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_storage(registry: Registry) -> None:
    from tunnelmesh.storage import FilesystemStorage

    registry.add_storage(FilesystemStorage)
