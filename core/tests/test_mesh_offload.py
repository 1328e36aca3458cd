"""Coalescing TCP segments into one TUN write with a virtio_net_hdr (receive-side offload)."""

from __future__ import annotations

import socket
import struct

from tunnelmesh.mesh.offload import VNET_HDR_NONE, coalesce_ipv4_tcp

OPTS = bytes([1, 1, 8, 10]) + bytes(8)  # NOP NOP timestamps


def seg(seq: int, payload: bytes, flags: int = 0x10, src_port: int = 40000, ack: int = 7) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", src_port, 5201, seq, ack, (32 // 4) << 4, flags, 500, 0, 0)
    tcp += OPTS
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, total, 1, 0x4000, 64, 6, 0,
        socket.inet_aton("10.42.0.1"), socket.inet_aton("10.42.0.2"),
    )  # fmt: skip
    return ip + tcp + payload


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_a_run_of_segments_becomes_one_gso_write() -> None:
    mss = 1368
    segs = [seg(1000 + i * mss, bytes([i]) * mss) for i in range(5)]
    segs.append(seg(1000 + 5 * mss, b"z" * 100, flags=0x18))  # shorter, PSH: ends the run
    [write] = coalesce_ipv4_tcp(segs)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack(
        "<BBHHHH", write[:10]
    )
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, 1, 52, mss, 20, 16)
    pkt = write[10:]
    assert int.from_bytes(pkt[2:4], "big") == len(pkt) == 52 + 5 * mss + 100
    assert checksum(pkt[:20]) == 0xFFFF  # valid IPv4 header checksum
    assert pkt[33] == 0x18  # PSH of the last segment kept
    assert pkt[52:] == b"".join(s[52:] for s in segs)
    # the TCP checksum field holds the pseudo-header sum, which the kernel completes
    pseudo = pkt[12:20] + struct.pack("!HH", 6, len(pkt) - 20)
    assert int.from_bytes(pkt[36:38], "big") == checksum(pseudo)


def test_what_is_not_coalesced() -> None:
    mss = 1000
    a = seg(1, b"a" * mss)
    gap = seg(1 + 2 * mss, b"b" * mss)  # not consecutive
    other_flow = seg(1 + mss, b"c" * mss, src_port=40001)
    other_ack = seg(1 + mss, b"d" * mss, ack=8)
    syn = seg(5, b"", flags=0x02)
    udp = bytearray(a)
    udp[9] = 17
    for pair in ([a, gap], [a, other_flow], [a, other_ack], [syn, a], [bytes(udp), a]):
        writes = coalesce_ipv4_tcp(pair)
        assert writes == [VNET_HDR_NONE + p for p in pair]
    assert coalesce_ipv4_tcp([a]) == [VNET_HDR_NONE + a]


def test_runs_stop_at_64k() -> None:
    mss = 1368
    segs = [seg(i * mss, b"x" * mss) for i in range(60)]
    writes = coalesce_ipv4_tcp(segs)
    assert len(writes) == 2
    assert all(len(w) - 10 <= 65535 for w in writes)
    assert sum(len(w) - 10 - 52 for w in writes) == 60 * mss
