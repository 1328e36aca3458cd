"""Built-in plugin ``builtin.dns``: the coordinator-backed DNS backend (``coordinator``)."""

from __future__ import annotations

from tunnelmesh import hookimpl
from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_dns_backends(registry: Registry) -> None:
    from tunnelmesh.dns.backend import CoordinatorBackend

    registry.add_dns_backend(CoordinatorBackend)
