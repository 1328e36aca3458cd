"""The routing table and the forwarder's checks, without sockets (a pipe stands in for TUN)."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from tunnelmesh.abc import Link, Packet, PacketFilter
from tunnelmesh.mesh.forwarder import Forwarder
from tunnelmesh.mesh.routing import RoutingTable


def ip4(src: str, dst: str, payload: bytes = b"x") -> bytes:
    n = 20 + len(payload)
    return (
        bytes([0x45, 0, n >> 8, n & 255, 0, 0, 0, 0, 64, 17, 0, 0])
        + socket.inet_aton(src)
        + socket.inet_aton(dst)
        + payload
    )


class FakeLink(Link):
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.mtu = 1420
        self.sent: list[bytes] = []

    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        self.sent.extend(bytes(d) for d in datagrams)

    def set_receiver(self, deliver: object) -> None:
        self.deliver = deliver

    async def recv_batch(self) -> list[bytes]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def test_set_lookup_replace_remove() -> None:
    t = RoutingTable()
    seen: list[str] = []
    t.subscribe(lambda r: seen.append(r.name))
    b = t.set_peer("b", public_key=b"k" * 32, mesh_ips=["10.42.0.2"], endpoints=["1.2.3.4:5"])
    assert t.lookup(socket.inet_aton("10.42.0.2")) is b
    assert t.lookup(socket.inet_aton("10.42.0.3")) is None
    t.set_peer("b", mesh_ips=["10.42.0.9"])
    assert t.lookup(socket.inet_aton("10.42.0.2")) is None
    assert t.lookup(socket.inet_aton("10.42.0.9")) is b
    net = t.set_peer("gw", mesh_ips=["10.99.0.0/16", "10.99.7.0/24"])
    more = t.set_peer("site", mesh_ips=["10.99.8.0/24"])
    assert t.lookup(socket.inet_aton("10.99.8.1")) is more  # longest prefix first
    assert t.lookup(socket.inet_aton("10.99.1.1")) is net
    t.remove_peer("site")
    assert t.lookup(socket.inet_aton("10.99.8.1")) is net
    assert seen == ["b", "b", "gw", "site", "site"]


def _forwarder(filters: Sequence[PacketFilter] = ()) -> tuple[Forwarder, RoutingTable, int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    table = RoutingTable()
    table.set_peer("b", mesh_ips=["10.42.0.2"])
    table.set_peer("c", mesh_ips=["10.42.0.3"])
    return Forwarder(w, table, filters), table, r, w


def test_inbound_drops_spoofed_sources_and_writes_the_rest() -> None:
    fwd, _table, r, w = _forwarder()
    link = FakeLink("b")
    fwd.attach(link)
    good = ip4("10.42.0.2", "10.42.0.1")
    spoofed = ip4("10.42.0.3", "10.42.0.1")  # c's address arriving from b
    fwd.deliver(link, [good, spoofed, good])
    assert fwd.stats["dropped_spoofed"] == 1
    assert os.read(r, 4096) == good + good  # a pipe merges the two writes
    os.close(r)
    os.close(w)


def test_outbound_routes_groups_and_filters() -> None:
    class DenyUdpToC(PacketFilter):
        name = "deny-c"

        def verdicts(self, packets: Sequence[Packet], peer: str, inbound: bool) -> list[bool]:
            return [peer != "c" for _ in packets]

    r, w = os.pipe()
    os.set_blocking(r, False)
    table = RoutingTable()
    table.set_peer("b", mesh_ips=["10.42.0.2"])
    table.set_peer("c", mesh_ips=["10.42.0.3"])
    fwd = Forwarder(r, table, [DenyUdpToC()])
    lb, lc = FakeLink("b"), FakeLink("c")
    fwd.attach(lb)
    fwd.attach(lc)
    for dst in ("10.42.0.2", "10.42.0.3", "10.42.0.2", "10.42.0.77"):
        os.write(w, ip4("10.42.0.1", dst))
        fwd._on_tun_readable()
    assert len(lb.sent) == 2 and lc.sent == []
    assert fwd.stats["dropped_filter"] == 1
    assert fwd.stats["dropped_no_route"] == 1
    os.close(r)
    os.close(w)
