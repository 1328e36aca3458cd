"""Prometheus metrics of the node and the coordinator (see docs/metrics.md).

Collectors read the counters the running parts already keep, when Prometheus scrapes;
:class:`MetricsServer` serves them on ``metrics.listen``. The built-in plugin
``builtin.metrics`` starts one for every node (on its mesh IP) and coordinator (on 127.0.0.1).
"""

from __future__ import annotations

from tunnelmesh.metrics.base import (
    Family,
    FamilyCollector,
    MetricsServer,
    add_collector,
    exposition,
    remove_collector,
)
from tunnelmesh.metrics.coordinator import CoordinatorCollector
from tunnelmesh.metrics.node import NodeCollector

__all__ = [
    "COORDINATOR_PORT",
    "NODE_PORT",
    "CoordinatorCollector",
    "Family",
    "FamilyCollector",
    "MetricsServer",
    "NodeCollector",
    "add_collector",
    "exposition",
    "remove_collector",
]

NODE_PORT = 9273
"""A node's metrics port on its mesh IP (``metrics.listen`` empty)."""
COORDINATOR_PORT = 9274
"""The coordinator's metrics port on 127.0.0.1 (``metrics.listen`` empty)."""
