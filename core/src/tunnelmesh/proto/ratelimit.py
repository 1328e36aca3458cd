"""Per-source rate limit of handshake messages under load (WireGuard whitepaper section 5.3).

A cookie reply proves that a sender can receive at its source address, but a sender that can
(a host on the path, or one spoofing nothing) still makes the responder do Curve25519 work for
every initiation it sends. So, as wireguard-go and the Linux kernel do, a responder *under load*
lets each source through a token bucket after mac2 has been checked: at most
:data:`PACKETS_PER_SECOND` handshake messages a second, :data:`PACKETS_BURSTABLE` at once. Out of
load nothing is limited (a lossy path retrying must never be slowed down).

A source is the IP address a datagram came from, without the port (many ports of one host are
one source); an IPv6 source is its /64, since one host usually holds a whole /64 (the Linux
kernel's rule). Buckets idle for a second are full again, so they are forgotten
(:data:`GC_AFTER`); at most ``max_entries`` sources are tracked, and past that a *new* source is
refused rather than an old one forgotten, so a flood from many addresses cannot reset anyone's
bucket (the kernel's rule too).

Sans-IO: :meth:`HandshakeRateLimiter.allow` takes the address and ``now``; nothing reads a clock.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

__all__ = [
    "GC_AFTER",
    "PACKETS_BURSTABLE",
    "PACKETS_PER_SECOND",
    "HandshakeRateLimiter",
    "source_of",
]

PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
GC_AFTER = 1.0
"""Seconds after which an idle source's bucket is full again, and so forgotten."""

_NS = 1_000_000_000
_COST = _NS // PACKETS_PER_SECOND  # tokens are nanoseconds of allowance: exact arithmetic
_MAX_TOKENS = _COST * PACKETS_BURSTABLE


def source_of(addr: object) -> bytes:
    """The source key of a datagram's address: its IPv4 address, or its IPv6 /64.

    ``addr`` is usually ``(host, port)`` (IPv6 also ``(host, port, flow, scope)``); anything
    else (a transport's own address type, e.g. a relay peer name) is its own source.
    """
    if isinstance(addr, tuple) and addr:
        try:
            ip = ipaddress.ip_address(addr[0])
        except (ValueError, TypeError):
            return repr(addr).encode()
        if isinstance(ip, ipaddress.IPv6Address):
            mapped = ip.ipv4_mapped
            return mapped.packed if mapped is not None else ip.packed[:8]
        return ip.packed
    return repr(addr).encode()


class HandshakeRateLimiter:
    """Token buckets of handshake messages, one per source.

    Args:
        max_entries: how many sources are tracked at once.
    """

    __slots__ = ("_entries", "_last_gc", "max_entries", "refused_new")

    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        """source -> (tokens, last time), both in nanoseconds, least recently seen first."""
        self._last_gc = float("-inf")
        self.refused_new = 0
        """New sources refused because the table was full."""

    def __len__(self) -> int:
        return len(self._entries)

    def allow(self, addr: object, now: float) -> bool:
        """Charge one handshake message from ``addr``; False when that source is over its rate."""
        if now - self._last_gc >= GC_AFTER:
            self._gc(now)
        now_ns = int(now * _NS)
        key = source_of(addr)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_entries:
                self.refused_new += 1
                return False
            self._entries[key] = (_MAX_TOKENS - _COST, now_ns)
            return True
        tokens, last = entry
        tokens = min(_MAX_TOKENS, tokens + max(0, now_ns - last))
        self._entries.move_to_end(key)
        if tokens >= _COST:
            self._entries[key] = (tokens - _COST, now_ns)
            return True
        self._entries[key] = (tokens, now_ns)
        return False

    def _gc(self, now: float) -> None:
        self._last_gc = now
        horizon = int((now - GC_AFTER) * _NS)
        entries = self._entries
        while entries:
            key, (_, last) = next(iter(entries.items()))
            if last >= horizon:
                break
            del entries[key]
