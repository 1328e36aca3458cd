"""The ``--listen`` list: parsing, and dropping duplicates and wildcard-covered addresses.

Rules (``/work/shared/spec/proxy.md`` section 1): each item is a literal ``IP:PORT``
(``127.0.0.1:8080``, ``[::1]:8080``); items may also be comma-separated. The list is sorted by
port then by the IP's text, exact duplicates go, and a wildcard (``0.0.0.0:P``, and here also
``[::]:P`` for IPv6) removes the other addresses of its family on the same port, which it covers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["DEFAULT_LISTEN", "dedupe", "parse_address", "parse_listen"]

DEFAULT_LISTEN = ("0.0.0.0:8080", "127.0.0.1:8080")

Address = tuple[str, int]


def parse_address(item: str) -> Address:
    """``"IP:PORT"`` to (ip, port).

    Raises:
        ValueError: not a literal socket address (host names, bare ports, spaces).
    """
    host, sep, port_text = item.rpartition(":")
    if not sep or not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"invalid socket address {item!r}: expected IP:PORT")
    port = int(port_text)
    if port > 0xFFFF:
        raise ValueError(f"invalid socket address {item!r}: port out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        version = 6
    else:
        version = 4
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid socket address {item!r}: expected IP:PORT") from None
    if ip.version != version:
        raise ValueError(f"invalid socket address {item!r}: IPv6 needs brackets, [::1]:PORT")
    return str(ip), port


def parse_listen(values: Iterable[str]) -> list[Address]:
    """Parse repeated and comma-separated ``--listen`` values, then :func:`dedupe` them.

    Raises:
        ValueError: an item is not a literal ``IP:PORT``.
    """
    items = [parse_address(item) for value in values for item in value.split(",")]
    return dedupe(items)


def dedupe(addresses: Iterable[Address]) -> list[Address]:
    """Sort, drop duplicates and the addresses a wildcard of the same family and port covers."""
    ordered = sorted(set(addresses), key=lambda a: (a[1], a[0]))
    wildcards = {(":" in host, port) for host, port in ordered if host in ("0.0.0.0", "::")}
    return [
        (host, port)
        for host, port in ordered
        if host in ("0.0.0.0", "::") or (":" in host, port) not in wildcards
    ]
