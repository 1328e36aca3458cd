"""Send-side TUN offload: TCP super-packets cut into MSS segments with complete checksums."""

from __future__ import annotations

import os
import socket
import struct

from tunnelmesh.mesh.forwarder import Forwarder
from tunnelmesh.mesh.offload import coalesce_ipv4_tcp, split_tso
from tunnelmesh.mesh.routing import RoutingTable

OPTS = bytes([1, 1, 8, 10]) + bytes(8)  # NOP NOP timestamps


def csum(data: bytes | bytearray) -> int:
    """Reference RFC 1071 sum, folded (0xFFFF over a valid header or segment)."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_ok(pkt: bytes) -> bool:
    ihl = (pkt[0] & 15) * 4
    pseudo = pkt[12:20] + struct.pack("!HH", pkt[9], len(pkt) - ihl)
    return csum(pseudo + pkt[ihl:]) == 0xFFFF


def super_packet(payload: bytes, mss: int, flags: int = 0x18, ip_id: int = 0xFFFE) -> bytes:
    """What the kernel hands over: one IPv4/TCP packet, checksum field = pseudo-header sum."""
    total = 20 + 32 + len(payload)
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45, 0, total if total < 65536 else 0, ip_id, 0x4000, 64, 6, 0,
            socket.inet_aton("10.42.0.1"), socket.inet_aton("10.42.0.2"),
        )
    )  # fmt: skip
    ip[10:12] = (~csum(bytes(ip)) & 0xFFFF).to_bytes(2, "big")
    pseudo = csum(ip[12:20] + struct.pack("!HH", 6, 32 + len(payload)))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 0xFFFFF000, 77, 8 << 4, flags, 500, pseudo, 0)
    hdr = struct.pack("<BBHHHH", 1, 1, 52, mss, 20, 16)  # NEEDS_CSUM, TCPV4
    return hdr + bytes(ip) + tcp + OPTS + payload


def test_super_packet_becomes_valid_segments() -> None:
    mss = 1368
    payload = bytes(range(256)) * 200 + b"odd"  # 51,203 bytes: a short, odd last segment
    segs = split_tso(super_packet(payload, mss))
    assert len(segs) == -(-len(payload) // mss)
    seq = 0xFFFFF000
    for i, seg in enumerate(segs):
        assert csum(seg[:20]) == 0xFFFF, i  # IPv4 header checksum
        assert tcp_ok(seg), i  # complete TCP checksum
        assert int.from_bytes(seg[2:4], "big") == len(seg)
        assert int.from_bytes(seg[4:6], "big") == (0xFFFE + i) & 0xFFFF  # IDs count up, wrap
        assert int.from_bytes(seg[24:28], "big") == seq  # sequence numbers wrap too
        assert seg[40:52] == OPTS
        seq = (seq + len(seg) - 52) & 0xFFFFFFFF
        last = i == len(segs) - 1
        assert seg[33] == (0x18 if last else 0x10)  # PSH only on the last segment
        assert len(seg) - 52 == (mss if not last else len(payload) % mss)
    assert b"".join(s[52:] for s in segs) == payload
    # and the receive side puts them back together into one packet of the same payload
    [merged] = coalesce_ipv4_tcp(segs[:-1])
    assert merged[10 + 52 :] == payload[: mss * (len(segs) - 1)]


def test_fin_and_cwr_go_to_the_right_segment() -> None:
    segs = split_tso(super_packet(b"x" * 3000, 1000, flags=0x80 | 0x10 | 0x08 | 0x01))
    assert [s[33] for s in segs] == [0x90, 0x10, 0x19]  # CWR first, FIN|PSH last
    assert all(tcp_ok(s) for s in segs)


def test_needs_csum_without_gso_is_completed_and_plain_reads_pass() -> None:
    udp_payload = b"hello, partial checksum"
    ip = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45, 0, 28 + len(udp_payload), 1, 0, 64, 17, 0,
            socket.inet_aton("10.42.0.1"), socket.inet_aton("10.42.0.2"),
        )
    )  # fmt: skip
    ip[10:12] = (~csum(bytes(ip)) & 0xFFFF).to_bytes(2, "big")
    pseudo = csum(ip[12:20] + struct.pack("!HH", 17, 8 + len(udp_payload)))
    udp = struct.pack("!HHHH", 5353, 53, 8 + len(udp_payload), pseudo) + udp_payload
    hdr = struct.pack("<BBHHHH", 1, 0, 0, 0, 20, 6)
    [pkt] = split_tso(hdr + bytes(ip) + udp)
    assert tcp_ok(pkt)  # the same sum rule holds for UDP
    assert pkt[26:28] != b"\0\0"  # a UDP checksum of zero would mean "none"
    plain = bytes(ip) + udp
    assert split_tso(bytes(10) + plain) == [plain]
    assert split_tso(bytes(10)) == []


def test_malformed_super_packets_are_dropped() -> None:
    good = super_packet(b"y" * 4000, 1000)
    assert split_tso(good[:40]) == []  # truncated
    bad_mss = good[:4] + b"\0\0" + good[6:]
    assert split_tso(bad_mss) == []
    v6 = good[:1] + bytes([4]) + good[2:]  # TSO6 is never asked for
    assert split_tso(v6) == []


def test_forwarder_sends_the_segments_of_a_super_packet() -> None:
    class Link_:
        peer = "b"
        mtu = 1420

        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send_batch(self, packets: list[bytes]) -> None:
            self.sent.extend(packets)

        def set_receiver(self, deliver: object) -> None:
            pass

    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        table = RoutingTable()
        table.set_peer("b", mesh_ips=["10.42.0.2"])
        fwd = Forwarder(r, table, vnet_hdr=True, tso=True)
        link = Link_()
        fwd.attach(link)  # type: ignore[arg-type]
        sp = super_packet(b"z" * 5000, 1368)
        os.write(w, sp)
        fwd._on_tun_readable()
        assert link.sent == split_tso(sp) and len(link.sent) == 4
        plain = bytes(10) + split_tso(sp)[0]
        os.write(w, plain)
        fwd._on_tun_readable()
        assert link.sent[4:] == [plain[10:]]
        assert fwd.stats["tso_segments"] == 4 and fwd.stats["tx_packets"] == 5
    finally:
        os.close(r)
        os.close(w)


def test_forwarder_batch_counts_segments_not_reads() -> None:
    """A TSO read can hold ~45 segments: the batch budget counts them, so one readiness
    callback does not turn 128 reads into a burst of thousands of datagrams."""

    class Link_:
        peer = "b"
        mtu = 1420
        sent: list[bytes] = []

        def send_batch(self, packets: list[bytes]) -> None:
            self.sent.extend(packets)

        def set_receiver(self, deliver: object) -> None:
            pass

    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # keeps read boundaries
    with r, w:
        r.setblocking(False)
        table = RoutingTable()
        table.set_peer("b", mesh_ips=["10.42.0.2"])
        fwd = Forwarder(r.fileno(), table, vnet_hdr=True, tso=True, batch=6)
        link = Link_()
        fwd.attach(link)  # type: ignore[arg-type]
        for _ in range(3):
            w.send(super_packet(b"z" * 4000, 1000))  # 4 segments each
        fwd._on_tun_readable()
        assert len(link.sent) == 8 and fwd.stats["tun_rx"] == 2  # stopped after 8 >= 6
        fwd._on_tun_readable()
        assert len(link.sent) == 12
