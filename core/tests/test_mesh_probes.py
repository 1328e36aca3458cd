"""The forwarder takes path probes out of a received batch in its one pass (a datagram
socket stands in for TUN): probes go to its probe sink and never to the TUN device; other
packets are checked as before; an IPv6 packet whose tenth byte is 253 is not a probe."""

from __future__ import annotations

import os
import socket

from test_mesh_routing import FakeLink, ip4
from tunnelmesh.mesh.forwarder import PROBE_PROTOCOL, Forwarder
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.node.paths import REQUEST, probe_packet


def _ip6(src: str, dst: str) -> bytes:
    return (
        bytes([0x60, 0, 0, 0, 0, 1, 17, 64])
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + b"x"
    )


def _read_all(fd: int) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(os.read(fd, 65536))
        except BlockingIOError:
            return out


def test_probes_go_to_the_sink_and_never_to_the_tun() -> None:
    rs, ws = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # keeps packet boundaries
    rs.setblocking(False)
    r, w = rs.fileno(), ws.fileno()
    try:
        routes = RoutingTable()
        routes.set_peer("b", mesh_ips=["10.42.0.2", "fdfd::2"])
        fw = Forwarder(w, routes)
        got: list[tuple[str, list[bytes]]] = []
        fw.probe_sink = lambda link, probes: got.append((link.peer, probes))
        probe = probe_packet(
            socket.inet_aton("10.42.0.2"), socket.inet_aton("10.42.0.1"), REQUEST, b"tok1", 3
        )
        assert probe[9] == PROBE_PROTOCOL
        data = ip4("10.42.0.2", "10.42.0.1", b"data")
        spoofed = ip4("10.42.0.9", "10.42.0.1")
        v6 = _ip6("fdfd::2", "fdfd::1")
        assert v6[9] == PROBE_PROTOCOL  # the second byte of its source address
        link = FakeLink("b")
        fw.deliver(link, [data, probe, spoofed, v6, probe])
        assert got == [("b", [probe, probe])]
        assert _read_all(r) == [data, v6]
        assert fw.stats["dropped_spoofed"] == 1 and fw.stats["rx_packets"] == 2
        # a short packet from an authenticated peer (an SSH frame can be 1 byte) is dropped
        fw.deliver(link, [b"\x45\x00\x00\x05\x00", b"\x45"])
        assert fw.stats["dropped_spoofed"] == 3 and _read_all(r) == []
        # a peer the routing table does not know: its probes still reach the sink
        fw.deliver(FakeLink("stranger"), [probe, data])
        assert got[-1] == ("stranger", [probe])
        assert fw.stats["dropped_unknown_peer"] == 1 and _read_all(r) == []
        # without a sink a probe is an ordinary packet
        fw.probe_sink = None
        fw.deliver(link, [probe])
        assert _read_all(r) == [probe]
    finally:
        rs.close()
        ws.close()
