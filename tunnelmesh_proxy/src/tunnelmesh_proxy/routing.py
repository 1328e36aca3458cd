"""Routing rules of the proxy: which upstream a request goes to (sans-IO, no sockets).

Rules are asked in registration order. This plugin registers first (``tryfirst``): its ``mesh``
rule (:class:`tunnelmesh_proxy.mesh.MeshPeerRule`, ``X-Tunnelmesh-Peer: NAME``), then:

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

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from tunnelmesh.abc import ProxyRule, Upstream

from tunnelmesh_proxy.headers import (
    NO_ROUTE,
    NOT_VISIBLE,
    PORT_HEADER,
    RouteError,
    parse_port,
    parse_u16,
)

__all__ = ["CmuxRule", "Router", "match_host", "workspace_ip"]

WORKSPACE_HEADER = "x-cmux-workspace-internal"

_TRAILING_DIGITS = re.compile(r"[0-9]+$")

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193


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
    port = parse_u16(port_text)
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
            if NOT_VISIBLE.search(raw_ws):
                raise RouteError("invalid header value (not UTF-8): X-Cmux-Workspace-Internal")
            name = raw_ws.strip()
            if not name:
                raise RouteError("X-Cmux-Workspace-Internal cannot be empty")
            return Upstream(self._workspace_ip(name), port)
        if from_host is not None:
            return Upstream(self._workspace_ip(from_host[0]), port)
        return Upstream(self.upstream_host, port)
