"""The routing table and the forwarder's checks, without sockets (a pipe stands in for TUN)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence

import pytest
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


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe standing in for the TUN device (read end non-blocking), closed even on failure."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def _table() -> RoutingTable:
    table = RoutingTable()
    table.set_peer("b", mesh_ips=["10.42.0.2"])
    table.set_peer("c", mesh_ips=["10.42.0.3"])
    return table


def test_inbound_drops_spoofed_sources_and_writes_the_rest(pipe: tuple[int, int]) -> None:
    r, w = pipe
    fwd = Forwarder(w, _table())
    link = FakeLink("b")
    fwd.attach(link)
    good = ip4("10.42.0.2", "10.42.0.1")
    good2 = ip4("10.42.0.2", "10.42.0.1", b"y")
    spoofed = ip4("10.42.0.3", "10.42.0.1")  # c's address arriving from b
    fwd.deliver(link, [good, spoofed, good2])
    assert dict(fwd.stats) == {"dropped_spoofed": 1, "rx_packets": 2}  # no write error
    assert os.read(r, 4096) == good + good2  # a pipe merges the two writes, in order


def test_outbound_routes_groups_and_filters(pipe: tuple[int, int]) -> None:
    class DenyUdpToC(PacketFilter):
        name = "deny-c"

        def verdicts(self, packets: Sequence[Packet], peer: str, inbound: bool) -> list[bool]:
            return [peer != "c" for _ in packets]

    r, w = pipe
    fwd = Forwarder(r, _table(), [DenyUdpToC()])
    lb, lc = FakeLink("b"), FakeLink("c")
    fwd.attach(lb)
    fwd.attach(lc)
    for dst in ("10.42.0.2", "10.42.0.3", "10.42.0.2", "10.42.0.77"):
        os.write(w, ip4("10.42.0.1", dst))
        fwd._on_tun_readable()
    assert len(lb.sent) == 2 and lc.sent == []
    assert fwd.stats["dropped_filter"] == 1
    assert fwd.stats["dropped_no_route"] == 1
