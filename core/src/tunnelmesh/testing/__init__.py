"""Test helpers for tunnelmesh and its plugins, shipped so third-party plugin authors use them too.

The pytest plugin (:mod:`tunnelmesh.testing.pytest_plugin`, loaded through the ``pytest11`` entry
point) adds the ``lab`` marker: tests marked ``@pytest.mark.lab`` need root, ``/dev/net/tun`` and
``ip netns``, and are skipped with the reason when one is missing. It also provides the ``lab``
and ``lab_factory`` fixtures: networks of namespaces with switches, NAT routers, an internet
host and link impairment, from :mod:`tunnelmesh.testing.lab` (see its docstring and
``docs/lab.md``).

Transport authors run the conformance suite (:mod:`tunnelmesh.testing.conformance`) against
their transport: subclass :class:`TransportConformance` in a test module, or
``await check_transport(make_pair)``. :class:`MemoryTransport` is an in-memory double.
"""

from __future__ import annotations

import os
import shutil

from tunnelmesh.testing.conformance import (
    ConformanceError,
    TransportConformance,
    TransportPair,
    check_transport,
)
from tunnelmesh.testing.memory import MemoryNetwork, MemoryTransport

__all__ = [
    "ConformanceError",
    "MemoryNetwork",
    "MemoryTransport",
    "TransportConformance",
    "TransportPair",
    "check_transport",
    "lab_unavailable_reason",
]


def lab_unavailable_reason() -> str | None:
    """Why the namespace lab cannot run here, or None when it can."""
    if os.name != "posix" or not os.path.exists("/proc/self/ns/net"):
        return "the namespace lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the namespace lab needs root (network namespaces, TUN devices, nftables)"
    if not os.path.exists("/dev/net/tun"):
        return "the namespace lab needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "the namespace lab needs iproute2's `ip` command (apt-get install iproute2)"
    return None
