"""Built-in plugin ``builtin.proxy``: core's mesh rule for the reverse proxy (``mesh``).

Built-ins are registered before installed plugins, so the mesh rule is asked first.
"""

from __future__ import annotations

from tunnelmesh import hookimpl
from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_proxy_rules(registry: Registry) -> None:
    from tunnelmesh.proxyrules import MeshPeerRule

    registry.add_proxy_rule(MeshPeerRule)
