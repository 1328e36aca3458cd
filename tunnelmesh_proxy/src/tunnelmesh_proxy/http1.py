"""HTTP/1.1 message heads as the proxy rewrites them (sans-IO: bytes in, bytes out).

Parsing itself is httptools' (llhttp); this module holds what the proxy decides about the
parsed pieces: which headers are hop-by-hop (RFC 9110 section 7.6.1, plus those that
``Connection`` names), how a body is framed on the way out, and the proxy's own responses.

Header lines are kept serialised (``b"Name: value\\r\\n"``) from the moment they are parsed, so
a head is written with one ``b"".join``; repeated headers (``Set-Cookie``, ``Cookie``) stay
separate lines in their order.
"""

from __future__ import annotations

import time
from email.utils import formatdate

__all__ = [
    "HOP_BY_HOP",
    "Framing",
    "chunk",
    "connection_tokens",
    "error_response",
    "http_date",
    "origin_form",
]

# Hop-by-hop headers (RFC 9110 s.7.6.1, plus the obsolete Proxy-Connection); never forwarded.
# Content-Length is end-to-end and kept; Transfer-Encoding is redone by the proxy.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

LAST_CHUNK = b"0\r\n\r\n"


class Framing:
    """How a body travels on one side (constants, compared by identity)."""

    NONE = 0  # no body (HEAD, 1xx, 204, 304, request without length)
    LENGTH = 1  # Content-Length: bytes pass as they are
    CHUNKED = 2  # chunked: each piece is re-framed as one chunk
    CLOSE = 3  # the body ends when the connection closes (responses only)


def connection_tokens(value: bytes) -> set[bytes]:
    """The lower-case tokens of a ``Connection`` header value."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def chunk(data: bytes) -> bytes:
    """One chunk of chunked transfer coding holding ``data`` (which must not be empty)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def origin_form(target: bytes) -> bytes:
    """The request target sent upstream: path and query only (absolute-form is reduced)."""
    if target[:1] == b"/" or target == b"*":
        return target
    scheme_end = target.find(b"://")
    if scheme_end < 0:
        return target
    slash = target.find(b"/", scheme_end + 3)
    query = target.find(b"?", scheme_end + 3)
    if slash < 0 or (0 <= query < slash):
        return b"/" + target[query:] if query >= 0 else b"/"
    return target[slash:]


class _DateCache:
    """The IMF-fixdate of the current second, formatted once a second."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.line


http_date = _DateCache().get
"""``b"date: <IMF-fixdate>\\r\\n"`` for the current second."""

_REASONS = {
    400: b"Bad Request",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}


def error_response(status: int, text: str, *, keep_alive: bool = True) -> bytes:
    """A complete plain-text response made by the proxy itself (400, 502, ...)."""
    body = text.encode("utf-8", "replace")
    return b"".join(
        (
            b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Error")),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"" if keep_alive else b"connection: close\r\n",
            http_date(),
            b"\r\n",
            body,
        )
    )
