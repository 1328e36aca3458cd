"""The mesh rule: ``X-Tunnelmesh-Peer: NAME`` (with ``X-Cmux-Port-Internal: PORT``) sends a
request to that mesh peer's IP.

:class:`MeshPeerRule` is registered by this plugin before its cmux rules (and ``tryfirst``, so
before any other plugin's rules), and only routes when the proxy is told to (``mesh`` in the
rule options, ``tunnelmesh proxy --mesh``): it is off by default.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from tunnelmesh.abc import ProxyRule, Upstream

from tunnelmesh_proxy.headers import NO_ROUTE, PEER_HEADER, PORT_HEADER, RouteError, parse_port

__all__ = ["HostsFileLookup", "MeshPeerRule", "PeerLookup", "resolver_lookup"]

_PEER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


PeerLookup = Callable[[str], "str | None"]
"""Maps a mesh peer name (lower case) to its mesh IP (or a host name), None when unknown.

Called on the proxy's hot path: it must answer from memory, without blocking.
"""


class HostsFileLookup:
    """A :data:`PeerLookup` fed from a hosts-format file (``IP name [alias ...]`` per line).

    This is the format of ``/etc/hosts`` and of the records file the mesh's DNS writes. A name
    ``web`` matches ``web`` and ``web.<domain>``. The file is read again when its modification
    time changes, checked at most once a second; a missing file means no peers.

    Args:
        path: the file.
        domain: the mesh's DNS suffix.
        clock: seconds, monotonic (tests pass a fake).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        domain: str = "tunnelmesh",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path)
        self.suffix = "." + domain.strip(".").lower()
        self._clock = clock
        self._checked = -1e18
        self._mtime: float | None = None
        self._table: dict[str, str] = {}

    def _reload(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            self._mtime, self._table = None, {}
            return
        if mtime == self._mtime:
            return
        table: dict[str, str] = {}
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.partition("#")[0].split()
                    for name in fields[1:]:
                        name = name.lower().rstrip(".")
                        name = name.removesuffix(self.suffix)
                        table.setdefault(name, fields[0])
        except OSError:
            return
        self._mtime, self._table = mtime, table

    def __call__(self, name: str) -> str | None:
        now = self._clock()
        if now - self._checked >= 1.0:
            self._checked = now
            self._reload()
        return self._table.get(name)


def resolver_lookup(domain: str = "tunnelmesh") -> PeerLookup:
    """A :data:`PeerLookup` that answers ``<name>.<domain>``: the connect resolves it.

    The proxy's upstream connect resolves host names asynchronously through the system resolver,
    which on a mesh node asks the node's DNS for ``*.tunnelmesh``.
    """
    suffix = "." + domain.strip(".")
    return lambda name: name + suffix


class MeshPeerRule(ProxyRule):
    """``X-Tunnelmesh-Peer: NAME`` routes to that mesh peer, at the ``X-Cmux-Port-Internal`` port.

    Args:
        lookup: peer name (lower case) to IP or host name; None for an unknown peer.
    """

    name: ClassVar[str] = "mesh"
    headers: ClassVar[frozenset[str]] = frozenset({PEER_HEADER, PORT_HEADER})
    private_headers: ClassVar[frozenset[str]] = frozenset({PEER_HEADER, PORT_HEADER})

    def __init__(self, lookup: PeerLookup) -> None:
        self.lookup = lookup

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MeshPeerRule | None:
        """The rule when it is asked for (``mesh`` true) and a ``peer_lookup`` is given.

        Opt-in: the rule lets whoever reaches the proxy's port connect to any port of any mesh
        peer, with this node's mesh identity, so it is never on by default.
        """
        lookup = options.get("peer_lookup")
        if not options.get("mesh") or lookup is None:
            return None
        return cls(lookup)

    def route(self, headers: Mapping[str, str]) -> Upstream | None:
        raw_peer = headers.get(PEER_HEADER)
        if raw_peer is None:
            return None
        raw_port = headers.get(PORT_HEADER)
        if raw_port is None:
            raise RouteError(NO_ROUTE)
        port = parse_port(raw_port)
        name = raw_peer.strip().lower()
        if _PEER_NAME.fullmatch(name) is None:
            raise RouteError(f"invalid peer name: {raw_peer.strip()}")
        ip = self.lookup(name)
        if ip is None:
            raise RouteError(f"unknown peer: {name}")
        return Upstream(ip, port)
