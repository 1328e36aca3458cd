"""Parsing ``host:port`` listen addresses and coordinator URLs."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from tunnelmesh.errors import ConfigError

__all__ = ["DEFAULT_API_PORT", "DEFAULT_STUN_PORT", "normalize_server_url", "split_hostport"]

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
