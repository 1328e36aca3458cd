"""Routing-header primitives every proxy rule shares: the port header and its parser.

``RouteError`` is a malformed routing header; its message is the plain-text body of the 400 the
proxy answers. A third-party rule (``tunnelmesh_register_proxy_rules``) extends the proxy and
imports these from here.
"""

from __future__ import annotations

import re

from tunnelmesh.errors import RemoteProtocolError

__all__ = [
    "NOT_VISIBLE",
    "NO_ROUTE",
    "PEER_HEADER",
    "PORT_HEADER",
    "RouteError",
    "parse_port",
    "parse_u16",
]

PORT_HEADER = "x-cmux-port-internal"
PEER_HEADER = "x-tunnelmesh-peer"
NO_ROUTE = "missing required header: X-Cmux-Port-Internal"

# hyper's HeaderValue::to_str accepts tab and visible ASCII (0x20-0x7e) only.
NOT_VISIBLE = re.compile(r"[^\t\x20-\x7e]")
_U16 = re.compile(r"\+?[0-9]+")


class RouteError(RemoteProtocolError, ValueError):
    """A routing header is malformed; the message is the plain-text body of the 400."""


def parse_u16(text: str) -> int | None:
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
    if NOT_VISIBLE.search(raw):
        raise RouteError("invalid header value (not UTF-8)")
    text = raw.strip()
    if not text:
        raise RouteError("header value cannot be empty")
    port = parse_u16(text)
    if not port:  # None, or 0: refused here although cmux's parser lets 0 through (spec s.12)
        raise RouteError("invalid port in X-Cmux-Port-Internal")
    return port
