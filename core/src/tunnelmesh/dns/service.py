"""The daemon side of the built-in DNS: backend, server and system integration together.

The node daemon runs one :class:`DnsService`::

    dns = DnsService.from_config(peer_config.dns, link="tun-mesh0", networks=["10.42.0.0/16"])
    await dns.start()                     # serve, then point the system resolver at it
    push_handlers.append(dns.backend.apply_push)   # every push-channel message
    ...
    await dns.aclose()                    # restore the system resolver, stop serving

Start-up order matters for the ``resolv.conf`` fallback: a backup left by a crash is restored
first, and upstreams are read from the original file before it is replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tunnelmesh.dns.backend import DEFAULT_DOMAINS, CoordinatorBackend
from tunnelmesh.dns.resolver import MeshResolver
from tunnelmesh.dns.server import DnsServer
from tunnelmesh.dns.system import SystemDns
from tunnelmesh.errors import DnsError

if TYPE_CHECKING:
    from tunnelmesh.config import DnsConfig

__all__ = ["DnsService"]

log = logging.getLogger(__name__)


class DnsService:
    """Resolver plus system integration; see the module docstring."""

    def __init__(
        self, backend: CoordinatorBackend, server: DnsServer, system: SystemDns | None
    ) -> None:
        self.backend = backend
        self.server = server
        self.system = system
        self.more: list[DnsServer] = []
        """Further listeners of the same resolver (:meth:`serve_also`)."""

    @classmethod
    def from_config(
        cls,
        config: DnsConfig,
        *,
        backend: CoordinatorBackend | None = None,
        link: str = "tun-mesh0",
        networks: Iterable[str] = (),
        domains: Iterable[str] = DEFAULT_DOMAINS,
        local_name: str = "",
        system: SystemDns | None = None,
    ) -> DnsService:
        domains = tuple(domains)
        if backend is None:
            backend = CoordinatorBackend(networks=networks, domains=domains, local_name=local_name)
        if system is None and config.system != "off":
            system = SystemDns(config.listen, link=link, domains=domains, mode=config.system)
        upstreams: list[str] | None = list(config.upstreams) or None
        if upstreams is None and system is not None:
            system.recover()
            upstreams = [
                f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in system.original_upstreams()
            ]
        resolver = MeshResolver(
            backend, domains=domains, ttl=config.cache_ttl, forward=config.forward
        )
        server = DnsServer(
            resolver,
            listen=config.listen,
            upstreams=upstreams,
            upstream_timeout=float(config.upstream_timeout),
        )
        return cls(backend, server, system)

    async def start(self) -> None:
        system = self.system
        if (
            system is not None
            and system.mode == "auto"
            and self.server.listen[1] != 53
            and not system.resolved_available()
        ):
            await self._start_on_port_53(system)
        else:
            await self.server.start()
        if self.system is not None:
            try:
                mode = self.system.apply()
                log.info("system resolver: %s", mode)
            except Exception:
                await self.server.aclose()
                raise

    async def _start_on_port_53(self, system: SystemDns) -> None:
        """``system: auto`` without systemd-resolved: resolv.conf cannot name a port, so the
        resolver serves port 53 of its address instead of ``listen``'s (the default 5353 is
        for resolved's stub, which holds port 53 where it runs). When port 53 is taken,
        ``listen`` is kept and the system resolver left alone (a warning says so)."""
        host, port = self.server.listen
        self.server.listen = (host, 53)
        try:
            await self.server.start()
        except DnsError as exc:
            log.warning("no systemd-resolved, and %s:53 cannot be used: %s", host, exc)
            self.server.listen = (host, port)
            await self.server.start()
            return
        self.server.upstreams = [u for u in self.server.upstreams if u != (host, 53)]
        system.server = f"[{host}]:53" if ":" in host else f"{host}:53"
        log.info(
            "no systemd-resolved: the resolver serves %s (not port %d) for resolv.conf",
            system.server,
            port,
        )

    async def serve_also(self, listen: str) -> DnsServer:
        """Answer on ``listen`` too, with the same resolver and upstreams (a WireGuard
        concentrator serves its clients on its mesh IP, port 53). Closed with the service.

        Raises:
            DnsError: the address cannot be bound.
        """
        server = DnsServer(
            self.server.resolver,
            listen=listen,
            upstreams=[f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.server.upstreams],
            upstream_timeout=self.server.upstream_timeout,
        )
        await server.start()
        self.more.append(server)
        return server

    async def aclose(self) -> None:
        if self.system is not None:
            self.system.restore()
        for extra in self.more:
            await extra.aclose()
        self.more.clear()
        await self.server.aclose()

    async def __aenter__(self) -> DnsService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
