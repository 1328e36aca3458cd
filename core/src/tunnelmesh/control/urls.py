"""Parsing ``host:port`` listen addresses, coordinator URLs, and checking peer endpoints."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from tunnelmesh.errors import ConfigError

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_STUN_PORT",
    "endpoint_problem",
    "normalize_server_url",
    "split_hostport",
]

DEFAULT_API_PORT = 8443
DEFAULT_STUN_PORT = 3478


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    """``"0.0.0.0:8443"``, ``"[::]:8443"``, ``":8443"``, ``"host"`` -> (host, port).

    Raises:
        ConfigError: the port is not a number in 0..65535.
    """
    value = value.strip()
    host, port_text = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ConfigError(f"bad address {value!r}: missing ']'")
        host, rest = value[1:end], value[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    if not port_text:
        return host or "0.0.0.0", default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad port in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port out of range in {value!r}")
    return host or "0.0.0.0", port


def join_hostport(host: str, port: int) -> str:
    """The inverse of :func:`split_hostport` (IPv6 hosts get brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalize_server_url(url: str) -> str:
    """Make a coordinator URL canonical: ``https://`` and ``:8443`` added when missing.

    Plain ``http://`` is refused: the coordinator always speaks TLS.

    Raises:
        ConfigError: empty, not http(s), has a path or a query.
    """
    url = url.strip()
    if not url:
        raise ConfigError("no coordinator URL (pass --server or set TUNNELMESH_SERVER)")
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ConfigError(f"coordinator URL {url!r} must use https:// (the API is TLS only)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"coordinator URL {url!r} must not have a path or query")
    if not parts.hostname:
        raise ConfigError(f"coordinator URL {url!r} has no host")
    try:
        port = parts.port or DEFAULT_API_PORT
    except ValueError:
        raise ConfigError(f"coordinator URL {url!r} has a bad port") from None
    host = parts.hostname
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"https://{host}:{port}"


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def endpoint_problem(ep: str, *, names: bool = False) -> str | None:
    """Why ``ep`` is not an endpoint other peers may be sent to (None: it is).

    An endpoint is ``IP:port`` (``[IPv6]:port``) of a unicast address: not loopback, multicast,
    unspecified or reserved (the IPv4 broadcast), and a port from 1 to 65535. Anything else
    would point other peers' traffic at themselves or at a whole network. ``names``: a DNS
    host name is accepted as the host too (``vpn.example.com:51820``, what a concentrator's
    clients dial).
    """
    if not isinstance(ep, str) or len(ep) > (255 if names else 64):
        return "is not IP:port"
    host, sep, port = ep.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        return "is not IP:port"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return "is not IP:port (write an IPv6 address as [addr]:port)"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not names:
            return "is not IP:port (host names are not endpoints)"
        if not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
            return "is not host:port (a host name is DNS labels joined by dots)"
        return None if 0 < int(port) < 65536 else "has no valid port (1 to 65535)"
    if not 0 < int(port) < 65536:
        return "has no valid port (1 to 65535)"
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved:
        return "is not a unicast address (loopback, multicast, unspecified or broadcast)"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return "is an IPv4-mapped IPv6 address (announce the IPv4 address)"
    return None
