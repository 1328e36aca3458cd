"""Hook implementations of the ``ssh`` plugin (nothing else lives here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnelmesh import hookimpl

if TYPE_CHECKING:
    from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_transports(registry: Registry) -> None:
    from tunnelmesh_ssh.transport import SshTransport

    registry.add_transport(SshTransport)
