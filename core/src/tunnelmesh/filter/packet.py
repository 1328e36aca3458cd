"""Reading the few header fields the packet filter needs straight from raw IPv4/IPv6 bytes.

No objects per packet: :func:`parse` returns a plain tuple ``(proto, src, dst, sport, dport,
extra)`` with the addresses as raw bytes (4 or 16 of them, cheap to hash), ``extra`` the TCP
flags or the ICMP type, and for ICMP echo messages the identifier in both port fields (so an
echo request and its reply share one connection key).

Special results:
    ``None``: the packet is too short or not IP: it cannot be a valid packet for the kernel.
    ``proto == FRAGMENT``: a non-first fragment; it carries no transport header. The first
    fragment is filtered as a whole packet, and the kernel cannot reassemble a datagram whose
    first fragment was dropped, so later fragments need no verdict of their own.
"""

from __future__ import annotations

__all__ = [
    "FRAGMENT",
    "ICMP",
    "ICMPV6",
    "TCP",
    "UDP",
    "Parsed",
    "icmp_inner",
    "is_icmp_error",
    "parse",
]

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58
FRAGMENT = -1

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

ICMP_ECHO_REQUEST = {ICMP: 8, ICMPV6: 128}
ICMP_ECHO_REPLY = {ICMP: 0, ICMPV6: 129}
_ICMP_ECHO_TYPES = {ICMP: (0, 8), ICMPV6: (128, 129)}
_ICMP_ERRORS = {ICMP: frozenset((3, 4, 5, 11, 12)), ICMPV6: frozenset((1, 2, 3, 4))}

# IPv6 extension headers that may sit between the fixed header and the transport header.
_V6_EXT = frozenset((0, 43, 60))
_V6_FRAG = 44
_V6_MAX_EXT = 8  # a longer chain is treated as malformed

Parsed = tuple[int, bytes, bytes, int, int, int]
"""``(proto, src, dst, sport, dport, extra)``; see the module docstring."""

_HEAD = 256  # bytes of a non-bytes packet copied for parsing: headers, and an ICMP error's quote


def parse(pkt: bytes | bytearray | memoryview) -> Parsed | None:
    """Return the filter's view of one raw IP packet, or None when it is not a valid packet."""
    b = pkt if type(pkt) is bytes else bytes(pkt[:_HEAD])
    n = len(b)
    if n < 20:
        return None
    version = b[0] >> 4
    if version == 4:
        ihl = (b[0] & 0x0F) << 2
        if ihl < 20 or n < ihl:
            return None
        proto = b[9]
        src = b[12:16]
        dst = b[16:20]
        if (b[6] & 0x1F) or b[7]:
            return (FRAGMENT, src, dst, 0, 0, proto)
        off = ihl
    elif version == 6:
        if n < 40:
            return None
        proto = b[6]
        src = b[8:24]
        dst = b[24:40]
        off = 40
        for _ in range(_V6_MAX_EXT):
            if proto in _V6_EXT:
                if n < off + 8:
                    return None
                proto, off = b[off], off + ((b[off + 1] + 1) << 3)
            elif proto == _V6_FRAG:
                if n < off + 8:
                    return None
                if (b[off + 2] << 8 | b[off + 3]) & 0xFFF8:
                    return (FRAGMENT, src, dst, 0, 0, b[off])
                proto, off = b[off], off + 8
            else:
                break
        else:
            return None
    else:
        return None
    if proto == TCP:
        if n < off + 14:
            return None
        return (
            TCP,
            src,
            dst,
            b[off] << 8 | b[off + 1],
            b[off + 2] << 8 | b[off + 3],
            b[off + 13],
        )
    if proto == UDP:
        if n < off + 8:
            return None
        return (UDP, src, dst, b[off] << 8 | b[off + 1], b[off + 2] << 8 | b[off + 3], 0)
    if proto in (ICMP, ICMPV6):
        if n < off + 8:
            return None
        icmp_type = b[off]
        if icmp_type in _ICMP_ECHO_TYPES[proto]:
            ident = b[off + 4] << 8 | b[off + 5]
            return (proto, src, dst, ident, ident, icmp_type)
        return (proto, src, dst, 0, 0, icmp_type)
    return (proto, src, dst, 0, 0, 0)


def is_icmp_error(proto: int, icmp_type: int) -> bool:
    """Whether an ICMP/ICMPv6 message reports an error about a packet it quotes."""
    errors = _ICMP_ERRORS.get(proto)
    return errors is not None and icmp_type in errors


def icmp_inner(pkt: bytes | bytearray | memoryview) -> Parsed | None:
    """Parse the packet quoted inside an ICMP error message (IP header plus 8 bytes of L4)."""
    b = pkt if type(pkt) is bytes else bytes(pkt[:_HEAD])
    if len(b) < 20:
        return None
    # The quoted packet follows the ICMP header (IPv6: no extension headers expected here).
    off = ((b[0] & 0x0F) << 2) + 8 if b[0] >> 4 == 4 else 48
    inner = parse(b[off:])
    if inner is None or inner[0] not in (TCP, UDP, ICMP, ICMPV6):
        # A quoted TCP header is cut after 8 bytes: parse() wants 14, so read the ports here.
        return _inner_ports(b[off:])
    return inner


def _inner_ports(b: bytes) -> Parsed | None:
    n = len(b)
    if n < 20:
        return None
    if b[0] >> 4 == 4:
        ihl = (b[0] & 0x0F) << 2
        proto, src, dst, off = b[9], b[12:16], b[16:20], ihl
    elif b[0] >> 4 == 6 and n >= 40:
        proto, src, dst, off = b[6], b[8:24], b[24:40], 40
    else:
        return None
    if proto in (TCP, UDP) and n >= off + 4:
        return (proto, src, dst, b[off] << 8 | b[off + 1], b[off + 2] << 8 | b[off + 3], 0)
    return None
