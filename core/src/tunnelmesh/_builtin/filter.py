"""Built-in plugin ``builtin.filter``: the stateful port filter (``ports``)."""

from __future__ import annotations

from tunnelmesh import hookimpl
from tunnelmesh.registry import Registry


@hookimpl
def tunnelmesh_register_filters(registry: Registry) -> None:
    from tunnelmesh.filter.engine import PortFilter

    registry.add_filter(PortFilter)
