"""Routing rules of the proxy: which upstream a request goes to (sans-IO, no sockets).

Two rules ship with the plugin, asked in this order:

``mesh`` (:class:`MeshPeerRule`)
    ``X-Tunnelmesh-Peer: NAME`` sends the request to that mesh peer's IP, at the port of
    ``X-Cmux-Port-Internal``. The peer's IP comes from a :data:`PeerLookup`.

``cmux`` (:class:`CmuxRule`), the cmux-proxy rules (``/work/shared/spec/proxy.md`` section 2-3)
    * port: ``X-Cmux-Port-Internal`` (1-65535), else the port of a
      ``<workspace>-<port>.localhost`` Host;
    * IP: ``X-Cmux-Workspace-Internal`` mapped by :func:`workspace_ip`, else the workspace of such
      a Host, else the configured upstream host.

    The port is checked before the workspace; the first error wins. A present but invalid
    header never falls back to the Host.

When no rule routes a request the proxy answers 400 ``missing required header:
X-Cmux-Port-Internal`` (:data:`NO_ROUTE`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from tunnelmesh.abc import ProxyRule, Upstream

__all__ = [
    "NO_ROUTE",
    "CmuxRule",
    "HostsFileLookup",
    "MeshPeerRule",
    "PeerLookup",
    "RouteError",
    "Router",
    "match_host",
    "parse_port",
    "workspace_ip",
]

PORT_HEADER = "x-cmux-port-internal"
WORKSPACE_HEADER = "x-cmux-workspace-internal"
PEER_HEADER = "x-tunnelmesh-peer"
NO_ROUTE = "missing required header: X-Cmux-Port-Internal"

# hyper's HeaderValue::to_str accepts tab and visible ASCII (0x20-0x7e) only.
_NOT_VISIBLE = re.compile(r"[^\t\x20-\x7e]")
_U16 = re.compile(r"\+?[0-9]+")
_TRAILING_DIGITS = re.compile(r"[0-9]+$")
_PEER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193


class RouteError(ValueError):
    """A routing header is malformed; the message is the plain-text body of the 400."""


def _u16(text: str) -> int | None:
    """Parse like Rust's ``u16::from_str``: optional ``+``, decimal digits, at most 65535."""
    if _U16.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value <= 0xFFFF else None


def parse_port(raw: str) -> int:
    """The port named by an ``X-Cmux-Port-Internal`` value.

    Raises:
        RouteError: not visible ASCII, empty after trimming, not a decimal 1-65535.
    """
    if _NOT_VISIBLE.search(raw):
        raise RouteError("invalid header value (not UTF-8)")
    text = raw.strip()
    if not text:
        raise RouteError("header value cannot be empty")
    port = _u16(text)
    if not port:  # None, or 0: refused here although cmux's parser lets 0 through (spec s.12)
        raise RouteError("invalid port in X-Cmux-Port-Internal")
    return port


def workspace_ip(name: str) -> str | None:
    """The loopback IP of a workspace: ``127.18.X.Y``, or None when the name cannot be mapped.

    Only the part after the last ``/`` counts. Trailing decimal digits N give
    ``X = (N >> 8) & 255, Y = N & 255`` (so N >= 65536 wraps); N > 2**32 - 1 cannot be mapped.
    A name without trailing digits is hashed: 32-bit FNV-1a of its ASCII-lower-cased bytes, the
    low 16 bits giving X (high byte) and Y (low byte).
    """
    part = name.rpartition("/")[2]
    digits = _TRAILING_DIGITS.search(part)
    if digits is not None:
        n = int(digits.group())
        if n > 0xFFFFFFFF:
            return None
    else:
        n = FNV_OFFSET
        for byte in part.lower().encode("latin-1", "replace"):
            n = ((n ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return f"127.18.{(n >> 8) & 255}.{n & 255}"


def match_host(host: str) -> tuple[str, int] | None:
    """Split a ``<workspace>-<port>.localhost[:anything]`` Host into (workspace, port).

    None when the Host has another shape; the caller then falls back to its other rules.
    """
    name = host.partition(":")[0]
    if len(name) <= 10 or name[-10:].lower() != ".localhost":
        return None
    workspace, dash, port_text = name[:-10].rpartition("-")
    if not dash or not workspace:
        return None
    port = _u16(port_text)
    if port is None:
        return None
    return workspace, port


class Router:
    """The rules of one proxy, asked in order for every request.

    Args:
        rules: rule instances, in the order they are asked.
    """

    __slots__ = ("header_names", "private_headers", "rules")

    def __init__(self, rules: Sequence[ProxyRule]) -> None:
        self.rules = tuple(rules)
        self.header_names: frozenset[str] = frozenset().union(*(r.headers for r in self.rules))
        self.private_headers: frozenset[str] = frozenset().union(
            *(r.private_headers for r in self.rules)
        )

    def route(self, headers: Mapping[str, str]) -> Upstream:
        """The upstream of a request.

        Raises:
            ValueError: a rule found its header malformed, or no rule routed the request;
                the message is the body of the 400.
        """
        for rule in self.rules:
            upstream = rule.route(headers)
            if upstream is not None:
                return upstream
        raise RouteError(NO_ROUTE)


class CmuxRule(ProxyRule):
    """cmux-proxy's routing: port header or Host, workspace header or Host, default host."""

    name: ClassVar[str] = "cmux"
    headers: ClassVar[frozenset[str]] = frozenset({PORT_HEADER, WORKSPACE_HEADER, "host"})
    private_headers: ClassVar[frozenset[str]] = frozenset({PORT_HEADER, WORKSPACE_HEADER})

    _CACHE_LIMIT = 4096

    def __init__(self, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self._ips: dict[str, str | None] = {}

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> CmuxRule:
        return cls(str(options.get("upstream_host") or "127.0.0.1"))

    def _workspace_ip(self, name: str) -> str:
        try:
            ip = self._ips[name]
        except KeyError:
            if len(self._ips) >= self._CACHE_LIMIT:
                self._ips.clear()
            ip = self._ips[name] = workspace_ip(name)
        if ip is None:
            raise RouteError(f"invalid workspace name: {name}")
        return ip

    def route(self, headers: Mapping[str, str]) -> Upstream | None:
        raw_port = headers.get(PORT_HEADER)
        host = headers.get("host")
        from_host = match_host(host) if host is not None else None
        if raw_port is not None:
            port = parse_port(raw_port)
        elif from_host is not None:
            port = from_host[1]
        else:
            return None
        raw_ws = headers.get(WORKSPACE_HEADER)
        if raw_ws is not None:
            if _NOT_VISIBLE.search(raw_ws):
                raise RouteError("invalid header value (not UTF-8): X-Cmux-Workspace-Internal")
            name = raw_ws.strip()
            if not name:
                raise RouteError("X-Cmux-Workspace-Internal cannot be empty")
            return Upstream(self._workspace_ip(name), port)
        if from_host is not None:
            return Upstream(self._workspace_ip(from_host[0]), port)
        return Upstream(self.upstream_host, port)


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
        lookup = options.get("peer_lookup")
        return cls(lookup) if lookup is not None else None

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
