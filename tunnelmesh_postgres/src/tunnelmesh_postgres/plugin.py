"""Hook implementations of the ``postgres`` plugin (nothing else lives here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_state_backends(registry: Registry) -> None:
    from tunnelmesh_postgres.store import PostgresStore

    registry.add_state_backend(PostgresStore)
