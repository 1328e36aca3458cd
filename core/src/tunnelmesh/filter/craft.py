"""Build raw IPv4/IPv6 packets for tests and benchmarks of packet filters.

Only the fields a filter reads are meaningful; checksums are left zero. Addresses are text::

    syn = tcp("10.42.0.2", "10.42.0.1", 40000, 22, SYN)
    reply = udp("10.42.0.1", "10.42.0.2", 53, 40000)
"""

from __future__ import annotations

import ipaddress
import struct

from tunnelmesh.filter.packet import ICMP, ICMPV6, TCP, UDP

__all__ = ["ACK", "FIN", "RST", "SYN", "fragment", "icmp", "icmp_error", "ip", "tcp", "udp"]

FIN = 0x01
SYN = 0x02
RST = 0x04
ACK = 0x10


def ip(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 packet (by the address family) carrying ``payload``."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0, s.packed, d.packed
        )
        return header + payload
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, s.packed, d.packed)
    return header + payload


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = ACK, data: bytes = b"") -> bytes:
    segment = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, flags, 65535, 0, 0)
    return ip(src, dst, TCP, segment + data)


def udp(src: str, dst: str, sport: int, dport: int, data: bytes = b"x") -> bytes:
    return ip(src, dst, UDP, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def icmp(src: str, dst: str, icmp_type: int, ident: int = 1, seq: int = 1) -> bytes:
    """An ICMP (IPv4) or ICMPv6 message; echo types carry ``ident`` and ``seq``."""
    proto = ICMP if ipaddress.ip_address(src).version == 4 else ICMPV6
    return ip(src, dst, proto, struct.pack("!BBHHH", icmp_type, 0, 0, ident, seq) + b"ping")


def icmp_error(src: str, dst: str, icmp_type: int, quoted: bytes) -> bytes:
    """An ICMP error (e.g. type 3 unreachable) quoting the first bytes of ``quoted``."""
    v4 = ipaddress.ip_address(src).version == 4
    proto = ICMP if v4 else ICMPV6
    head = (quoted[0] & 0x0F) * 4 if v4 else 40
    return ip(src, dst, proto, struct.pack("!BBHI", icmp_type, 0, 0, 0) + quoted[: head + 8])


def fragment(packet: bytes, offset_units: int) -> bytes:
    """Mark an IPv4 packet as a fragment at ``offset_units`` x 8 bytes (not a real split)."""
    b = bytearray(packet)
    b[6] = (offset_units >> 8) & 0x1F
    b[7] = offset_units & 0xFF
    return bytes(b)
