"""The built-in packet filter: a stateful, port-based filter with four rule layers.

* :class:`PortFilter` (:mod:`tunnelmesh.filter.engine`): the sans-IO engine the forwarder calls
  once per batch of packets.
* :class:`Rule`, :class:`Layer` (:mod:`tunnelmesh.filter.rules`): rules and where they come from,
  merged "most restrictive wins".
* :class:`FilterService` (:mod:`tunnelmesh.filter.service`): the daemon side, the layers and the
  control socket that ``tunnelmesh filter`` talks to.

See ``docs/filter.md``.
"""

from __future__ import annotations

from tunnelmesh.filter.conntrack import Timeouts
from tunnelmesh.filter.engine import FilterStats, PortFilter, RuleStats
from tunnelmesh.filter.rules import Layer, Rule
from tunnelmesh.filter.service import FilterService

__all__ = ["FilterService", "FilterStats", "Layer", "PortFilter", "Rule", "RuleStats", "Timeouts"]
