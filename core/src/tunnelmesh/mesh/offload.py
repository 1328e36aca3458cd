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

Send side (:func:`split_tso`): with ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4)`` the kernel hands
the forwarder TCP super-packets of up to 64 KiB (``gso_type=TCPV4``) and packets whose L4
checksum is only the pseudo-header sum (``NEEDS_CSUM``). Each super-packet is cut into
``gso_size`` segments with their own IPv4 length, ID and checksum, TCP sequence number, flags
(FIN/PSH on the last segment only, CWR on the first) and a complete TCP checksum, so every
sealed WireGuard message still carries one whole, valid IP packet (what wireguard-go and the
Linux module expect). The payload sum is ``int.from_bytes(...) % 0xFFFF`` (the ones'-complement
sum of 16-bit words is the number modulo 0xFFFF); the header sums are incremental.
"""

from __future__ import annotations

import struct

__all__ = ["VNET_HDR_NONE", "coalesce_ipv4_tcp", "split_tso"]

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


def _run_key(hl: int) -> struct.Struct:
    """The fields a segment with ``hl`` bytes of IPv4 + TCP header must share with the first of
    a run, read in one ``unpack_from``: version/IHL and TOS; fragment bits, TTL and protocol;
    addresses and ports; the sequence number (the next one expected); ACK number and data
    offset; the flags; the TCP options."""
    key = _RUN_KEYS.get(hl)
    if key is None:
        key = _RUN_KEYS[hl] = struct.Struct(f"!BB4x4s2x12sI5sB6x{hl - 40}s")
    return key


_RUN_KEYS: dict[int, struct.Struct] = {}


def coalesce_ipv4_tcp(packets: list[bytes]) -> list[bytes]:
    """Turn IP packets into TUN writes (each prefixed with a virtio_net_hdr), coalescing runs."""
    out: list[bytes] = []
    append = out.append
    i, n = 0, len(packets)
    while i < n:
        p = packets[i]
        thl = _candidate(p) if i + 1 < n else 0  # the last packet (a lone one) runs alone
        if not thl or p[33] & _PSH:
            append(VNET_HDR_NONE + p)
            i += 1
            continue
        hl = 20 + thl
        size = len(p) - hl
        # what every following segment must share with the first, read in one call per
        # segment (this loop runs once per received packet)
        unpack = _run_key(hl).unpack_from
        ver, tos, head, addrs, seq, acks, _flags, options = unpack(p)
        seq = (seq + size) & 0xFFFFFFFF
        total = len(p)
        payloads = [p[hl:]]
        last_flags = _ACK
        j = i + 1
        while j < n:
            q = packets[j]
            qsize = len(q) - hl
            if qsize <= 0 or qsize > size or total + qsize > _MAX_TOTAL:
                break
            key = unpack(q)
            if key != (ver, tos, head, addrs, seq, acks, _ACK, options):
                if key != (ver, tos, head, addrs, seq, acks, _ACK | _PSH, options):
                    break
                last_flags = _ACK | _PSH  # the last segment of the run
                payloads.append(q[hl:])
                total += qsize
                j += 1
                break
            payloads.append(q[hl:])
            total += qsize
            j += 1
            if qsize < size:
                break
            seq = (seq + qsize) & 0xFFFFFFFF
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


_GSO_NONE = 0
_IP_TCP = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")
_GSO_ECN = 0x80
_FIN, _CWR = 0x01, 0x80


def _fold(s: int) -> int:
    """Fold a sum of 16-bit words to its ones'-complement checksum field value."""
    r = s % 0xFFFF
    return 0xFFFF - r if r else 0xFFFF


def _sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit big-endian word sum of ``data`` modulo 0xFFFF (odd length zero-padded)."""
    v = int.from_bytes(data, "big")
    return (v << 8 if len(data) & 1 else v) % 0xFFFF


def _complete_checksum(pkt: bytes, start: int, offset: int) -> bytes:
    """Finish a NEEDS_CSUM packet: the field holds the pseudo-header sum; add the rest."""
    field = start + offset
    if field + 2 > len(pkt) or start & 1:
        return pkt
    out = bytearray(pkt)
    out[field : field + 2] = _fold(_sum(memoryview(pkt)[start:])).to_bytes(2, "big")
    return bytes(out)


def split_tso(pkt: bytes) -> list[bytes]:
    """Turn one read from a TUN device with offload on (virtio_net_hdr first) into IP packets.

    A TCPv4 super-packet becomes its MSS-sized segments with complete checksums; a packet with
    only ``NEEDS_CSUM`` gets its checksum finished; anything else loses its header. Returns []
    for a read too short to hold an IP packet.
    """
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _HDR.unpack_from(pkt)
    if gso_type & ~_GSO_ECN == _GSO_NONE:
        ip = pkt[10:]
        if flags & _F_NEEDS_CSUM and len(ip) > csum_start:
            return [_complete_checksum(ip, csum_start, csum_offset)]
        return [ip] if ip else []
    if gso_type & ~_GSO_ECN != _GSO_TCPV4 or len(pkt) < 50 or pkt[10] != 0x45:
        return []  # TSO6/UDP GSO are never enabled; a malformed super-packet is dropped
    thl = (pkt[42] >> 4) * 4
    hl = 20 + thl
    view = memoryview(pkt)[10:]
    n = len(view)
    if thl < 20 or n <= hl or gso_size == 0:
        return []
    (ver_ihl, tos, _total, ident, frag, ttl, proto, _csum, src, dst, sport, dport, seq0, ack,
     off, tflags, win, _tcsum, urg) = _IP_TCP.unpack_from(pkt, 10)  # fmt: skip
    options = view[40:hl]
    # header sums without the per-segment fields (IP length, ID, checksum; TCP sequence,
    # flags, checksum); the TCP one includes the pseudo-header's addresses and protocol
    addr_sum = _sum(view[12:20])
    ip_base = (ver_ihl << 8 | tos) + frag + (ttl << 8 | proto) + addr_sum
    tcp_base = addr_sum + 6 + sport + dport + (ack >> 16) + (ack & 0xFFFF) + win + urg
    tcp_base += _sum(options) + (off << 8)
    pack = _IP_TCP.pack
    out: list[bytes] = []
    append = out.append
    mask = ~(_FIN | _PSH)
    for start in range(hl, n, gso_size):
        seg = view[start : start + gso_size]
        size = len(seg)
        total = hl + size
        f = tflags if start + size >= n else tflags & mask
        if start != hl:
            f &= ~_CWR
        seq = (seq0 + start - hl) & 0xFFFFFFFF
        r = (ip_base + total + ident) % 0xFFFF
        ip_csum = 0xFFFF - r if r else 0xFFFF
        v = int.from_bytes(seg, "big")
        r = (tcp_base + total - 20 + (seq >> 16) + (seq & 0xFFFF) + f
             + (v << 8 if size & 1 else v)) % 0xFFFF  # fmt: skip
        tcp_csum = 0xFFFF - r if r else 0xFFFF
        header = pack(
            ver_ihl, tos, total, ident, frag, ttl, proto, ip_csum, src, dst,
            sport, dport, seq, ack, off, f, win, tcp_csum, urg,
        )  # fmt: skip
        append(b"".join((header, options, seg)))
        ident = (ident + 1) & 0xFFFF
    return out
