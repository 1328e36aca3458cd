"""TUN offload on the receive side: coalesce TCP segments into one super-packet per write.

With ``IFF_VNET_HDR`` every packet written to the TUN device starts with a 10-byte
``virtio_net_hdr``. Decrypted packets of one TCP flow that follow each other (same addresses,
ports, ACK number, TCP options, consecutive sequence numbers, equal segment sizes, only ACK or
a final PSH) are joined into one IPv4 packet of up to 64 KiB, written once with
``gso_type=TCPV4``, ``gso_size`` = the segment size and ``NEEDS_CSUM`` (the TCP checksum field
holds the pseudo-header sum; the kernel finishes it). The receiving TCP stack then handles one
packet instead of dozens, which is where most of the receive cost of a tunnel goes (the same
trick as wireguard-go's ``tun/offload_linux.go``). The packets on the wire are unchanged: one
WireGuard message per IP packet.

Everything else is written with an all-zero header (no offload: the kernel checks checksums as
usual).
"""

from __future__ import annotations

import struct

__all__ = ["VNET_HDR_NONE", "coalesce_ipv4_tcp"]

VNET_HDR_NONE = bytes(10)
_F_NEEDS_CSUM = 1
_GSO_TCPV4 = 1
_HDR = struct.Struct("<BBHHHH")
_TEN_H = struct.Struct("!10H")
_MAX_TOTAL = 65535
_ACK, _PSH = 0x10, 0x08


def _ip_checksum(header: bytes) -> int:
    s: int = sum(_TEN_H.unpack(header))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _candidate(p: bytes) -> int:
    """The TCP header length when ``p`` may be coalesced, else 0."""
    if len(p) < 40 or p[0] != 0x45 or p[9] != 6 or (p[6] & 0x3F) or p[7]:
        return 0
    thl = (p[32] >> 4) * 4
    if thl < 20 or len(p) <= 20 + thl or (p[33] & ~_PSH) != _ACK:
        return 0
    return thl


def coalesce_ipv4_tcp(packets: list[bytes]) -> list[bytes]:
    """Turn IP packets into TUN writes (each prefixed with a virtio_net_hdr), coalescing runs."""
    out: list[bytes] = []
    append = out.append
    i, n = 0, len(packets)
    while i < n:
        p = packets[i]
        thl = _candidate(p)
        if not thl or p[33] & _PSH or i + 1 == n:
            append(VNET_HDR_NONE + p)
            i += 1
            continue
        hl = 20 + thl
        size = len(p) - hl
        key_ip = p[12:24]  # addresses and ports
        key_tcp = p[28:32]  # ack number
        options = p[40:hl]
        seq = int.from_bytes(p[24:28], "big") + size
        total = len(p)
        payloads = [p[hl:]]
        last_flags = p[33]
        j = i + 1
        while j < n:
            q = packets[j]
            if (
                q[12:24] != key_ip
                or _candidate(q) != thl
                or q[28:32] != key_tcp
                or q[40:hl] != options
                or int.from_bytes(q[24:28], "big") != seq & 0xFFFFFFFF
                or q[1] != p[1]
                or q[8] != p[8]
            ):
                break
            qsize = len(q) - hl
            if qsize > size or total + qsize > _MAX_TOTAL:
                break
            payloads.append(q[hl:])
            total += qsize
            seq += qsize
            last_flags = q[33]
            j += 1
            if qsize < size or last_flags & _PSH:
                break
        if j - i == 1:
            append(VNET_HDR_NONE + p)
            i += 1
            continue
        ip = bytearray(p[:20])
        ip[2:4] = total.to_bytes(2, "big")
        ip[10:12] = b"\x00\x00"
        ip[10:12] = _ip_checksum(bytes(ip)).to_bytes(2, "big")
        tcp = bytearray(p[20:hl])
        tcp[13] = last_flags
        # pseudo-header sum (not complemented): the kernel adds the segment and folds
        tcp_len = total - 20
        s = sum(struct.unpack("!4H", p[12:20])) + 6 + tcp_len
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        tcp[16:18] = s.to_bytes(2, "big")
        hdr = _HDR.pack(_F_NEEDS_CSUM, _GSO_TCPV4, hl, size, 20, 16)
        append(b"".join((hdr, ip, tcp, *payloads)))
        i = j
    return out
