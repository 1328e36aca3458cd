"""The built-in mesh DNS resolver.

* :class:`CoordinatorBackend` (:mod:`tunnelmesh.dns.backend`): mesh names from the
  coordinator, fed by the control plane's push channel.
* :class:`MeshResolver` (:mod:`tunnelmesh.dns.resolver`): sans-IO, query bytes to answer bytes.
* :class:`DnsServer` (:mod:`tunnelmesh.dns.server`): asyncio UDP/TCP driver with forwarding.
* :class:`SystemDns` (:mod:`tunnelmesh.dns.system`): systemd-resolved per-link DNS, or the
  resolv.conf fallback, restored on exit.
* :class:`DnsService` (:mod:`tunnelmesh.dns.service`): all of it for the node daemon.

See ``docs/dns.md``.
"""

from __future__ import annotations

from tunnelmesh.dns.backend import DEFAULT_DOMAINS, CoordinatorBackend
from tunnelmesh.dns.resolver import Action, MeshResolver, Result
from tunnelmesh.dns.server import DnsServer
from tunnelmesh.dns.service import DnsService
from tunnelmesh.dns.system import SystemDns

__all__ = [
    "DEFAULT_DOMAINS",
    "Action",
    "CoordinatorBackend",
    "DnsServer",
    "DnsService",
    "MeshResolver",
    "Result",
    "SystemDns",
]
