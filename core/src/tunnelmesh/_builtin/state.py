"""Built-in plugin: the SQLite state backend (the coordinator's default, ``state.backend: sqlite``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_state_backends(registry: Registry) -> None:
    from tunnelmesh.coordinator.sqlite import SqliteStore

    registry.add_state_backend(SqliteStore)
