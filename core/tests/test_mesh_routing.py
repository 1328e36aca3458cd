"""The routing table and the forwarder's checks, without a TUN device (a pipe stands in for it, or
a datagram socket pair where packet boundaries matter)."""

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


def test_a_route_via_a_concentrator_follows_its_link() -> None:
    t = RoutingTable()
    phone = t.set_peer("phone", mesh_ips=["10.42.0.50"], via="conc")  # before its carrier
    assert phone.link is None
    t.set_peer("conc", mesh_ips=["10.42.0.9"])
    first, second = FakeLink("conc"), FakeLink("conc")
    t.set_link("conc", first)
    assert phone.link is first
    t.set_link("conc", second)  # the concentrator's path changed: the client follows
    assert phone.link is second and t.peers["conc"].link is second
    t.set_peer("phone", mesh_ips=["10.42.0.50"], via="conc")  # an unchanged update keeps it
    assert phone.link is second
    t.remove_peer("conc")
    assert phone.link is None and t.lookup(socket.inet_aton("10.42.0.50")) is phone
    t.set_peer("conc", mesh_ips=["10.42.0.9"])
    t.set_link("conc", first)
    assert phone.link is first
    t.set_peer("phone", mesh_ips=["10.42.0.50"], client=True)  # now served here: own link
    assert phone.link is None and phone.client and phone.via == ""


class Recorder(PacketFilter):
    name = "recorder"

    def __init__(self, deny: str = "") -> None:
        self.seen: list[tuple[str, bool, int]] = []
        self.deny = deny

    def verdicts(self, packets: Sequence[Packet], peer: str, inbound: bool) -> list[bool]:
        self.seen.append((peer, inbound, len(packets)))
        return [peer != self.deny for _ in packets]


def test_a_clients_source_is_accepted_from_its_concentrator_only(pipe: tuple[int, int]) -> None:
    """On a peer that is not the concentrator: the phone's address arrives from the
    concentrator's link and passes the filters under the phone's name; from another peer it is
    spoofed; the peer's packets to the phone leave on the concentrator's link."""
    r, w = pipe
    table = _table()
    table.set_peer("conc", mesh_ips=["10.42.0.9"])
    table.set_peer("phone", mesh_ips=["10.42.0.50"], via="conc")
    recorder = Recorder(deny="phone")
    fwd = Forwarder(w, table, [recorder])
    conc, b = FakeLink("conc"), FakeLink("b")
    fwd.attach(conc)
    fwd.attach(b)
    from_conc = ip4("10.42.0.9", "10.42.0.1")
    from_phone = ip4("10.42.0.50", "10.42.0.1")
    fwd.deliver(conc, [from_conc, from_phone, from_conc])
    assert recorder.seen == [("conc", True, 2), ("phone", True, 1)]
    assert fwd.stats["dropped_filter"] == 1  # the rule denying the phone
    assert os.read(r, 4096) == from_conc + from_conc
    recorder.deny = ""
    fwd.deliver(conc, [from_phone])
    assert os.read(r, 4096) == from_phone
    fwd.deliver(b, [from_phone])  # the phone's address from b: spoofed
    assert fwd.stats["dropped_spoofed"] == 1 and fwd.stats["rx_packets"] == 3
    # outbound: the phone's address goes to the concentrator's link, filtered as the phone
    out_r, out_w = os.pipe()
    try:
        os.set_blocking(out_r, False)
        fwd_out = Forwarder(out_r, table, [recorder])
        os.write(out_w, ip4("10.42.0.1", "10.42.0.50"))
        fwd_out._on_tun_readable()
    finally:
        os.close(out_r)
        os.close(out_w)
    assert conc.sent == [ip4("10.42.0.1", "10.42.0.50")]
    assert recorder.seen[-1] == ("phone", False, 1)


def test_a_concentrator_relays_between_its_clients_and_the_mesh(pipe: tuple[int, int]) -> None:
    r, w = pipe
    table = _table()  # b 10.42.0.2, c 10.42.0.3; this node is 10.42.0.1
    table.set_peer("phone", mesh_ips=["10.42.0.50"], client=True)
    table.set_peer("laptop", mesh_ips=["10.42.0.51"], via="c")  # a client of concentrator c
    recorder = Recorder()
    fwd = Forwarder(w, table, [recorder])
    fwd.relay = True
    phone, b, c = FakeLink("phone"), FakeLink("b"), FakeLink("c")
    for link in (phone, b, c):
        fwd.attach(link)
    to_b = ip4("10.42.0.50", "10.42.0.2")
    to_me = ip4("10.42.0.50", "10.42.0.1")
    to_laptop = ip4("10.42.0.50", "10.42.0.51")
    spoofed = ip4("10.42.0.2", "10.42.0.3")  # the phone may only source its own address
    fwd.deliver(phone, [to_b, to_me, to_laptop, spoofed, to_b])
    assert b.sent == [to_b, to_b] and c.sent == [to_laptop]
    assert os.read(r, 4096) == to_me
    assert recorder.seen == [("phone", True, 1)]  # only what is for this node is filtered here
    assert fwd.stats["relayed"] == 3 and fwd.stats["dropped_spoofed"] == 1
    # from the mesh to the phone: relayed; between two mesh peers: never (it goes to the TUN)
    back = ip4("10.42.0.2", "10.42.0.50")
    b_to_c = ip4("10.42.0.2", "10.42.0.3")
    fwd.deliver(b, [back, b_to_c])
    laptop_to_phone = ip4("10.42.0.51", "10.42.0.50")
    fwd.deliver(c, [laptop_to_phone])
    assert phone.sent == [back, laptop_to_phone]
    assert c.sent == [to_laptop] and os.read(r, 4096) == b_to_c
    # the concentrator's own exit route (0.0.0.0/0) is no way out for its clients: a phone's
    # packet for outside the mesh is this node's business (its filters, its exit guard)
    table.set_peer("b", mesh_ips=["10.42.0.2", "0.0.0.0/0"])
    outside = ip4("10.42.0.50", "192.0.2.9")
    fwd.deliver(phone, [outside])
    assert b.sent == [to_b, to_b] and os.read(r, 4096) == outside
    table.set_link("phone", None)  # the client went away: counted, not sent
    fwd.deliver(b, [back])
    assert fwd.stats["dropped_no_link"] == 1 and phone.sent == [back, laptop_to_phone]


def test_a_full_tunnel_client_goes_out_through_its_own_exit_only(pipe: tuple[int, int]) -> None:
    r, w = pipe
    table = _table()  # b 10.42.0.2 (the phone's exit), c 10.42.0.3; this node is 10.42.0.1
    table.set_peer("ex", mesh_ips=["10.42.0.4"])  # another exit, the tablet's
    table.set_peer("phone", mesh_ips=["10.42.0.50"], client=True, exit="b")
    table.set_peer("tablet", mesh_ips=["10.42.0.52"], client=True, exit="ex")
    table.set_peer("mesh-only", mesh_ips=["10.42.0.53"], client=True)
    fwd = Forwarder(w, table, [Recorder()], mesh_cidr="10.42.0.0/16")
    fwd.relay = True
    links = {n: FakeLink(n) for n in ("phone", "tablet", "mesh-only", "b", "c", "ex")}
    for link in links.values():
        fwd.attach(link)
    out = ip4("10.42.0.50", "192.0.2.9")
    to_c = ip4("10.42.0.50", "10.42.0.3")
    to_me = ip4("10.42.0.50", "10.42.0.1")
    unknown_mesh = ip4("10.42.0.50", "10.42.9.9")  # in the mesh, no route: never to the exit
    fwd.deliver(links["phone"], [out, to_c, to_me, unknown_mesh, out])
    assert links["b"].sent == [out, out] and links["c"].sent == [to_c]
    assert os.read(r, 4096) == to_me + unknown_mesh  # a pipe: the two writes in one read
    # a client without an exit: today's behaviour (this node's TUN, where the exit guard is)
    plain = ip4("10.42.0.53", "192.0.2.9")
    fwd.deliver(links["mesh-only"], [plain])
    assert os.read(r, 4096) == plain and links["b"].sent == [out, out]
    # the exit's answers (outside sources) reach the client whose exit it is, and no other
    answer = ip4("192.0.2.9", "10.42.0.50")
    fwd.deliver(links["b"], [answer])
    assert links["phone"].sent == [answer]
    spoofs = [
        ip4("192.0.2.9", "10.42.0.52"),  # b is not the tablet's exit
        ip4("192.0.2.9", "10.42.0.53"),  # nor the mesh-only client's
        ip4("192.0.2.9", "10.42.0.1"),  # nor this node's (it uses no exit)
        ip4("10.42.0.3", "10.42.0.50"),  # an exit answers for outside sources only
    ]
    fwd.deliver(links["b"], spoofs)
    fwd.deliver(links["c"], [answer])  # a non-exit peer: spoofed
    fwd.deliver(links["ex"], [answer])  # another exit, not the phone's
    assert links["phone"].sent == [answer]
    assert links["tablet"].sent == [] and links["mesh-only"].sent == []
    assert fwd.stats["dropped_spoofed"] == 6
    fwd.deliver(links["ex"], [ip4("192.0.2.9", "10.42.0.52")])
    assert links["tablet"].sent == [ip4("192.0.2.9", "10.42.0.52")]
    # an exit that is not in the table: the client's internet traffic is dropped, not sent
    table.set_peer("phone", mesh_ips=["10.42.0.50"], client=True, exit="?0123456789abcdef")
    fwd.deliver(links["phone"], [out])
    assert fwd.stats["dropped_no_exit"] == 1 and links["b"].sent == [out, out]
    with pytest.raises(BlockingIOError):
        os.read(r, 4096)


def test_a_lone_packet_is_read_once_and_a_burst_until_the_device_is_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ping must not pay for a read that ends in EAGAIN (a raised BlockingIOError); a burst
    is still read whole in one callback."""
    tun, app = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # packet boundaries kept
    tun.setblocking(False)
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        reads.append(fd)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting_read)
    try:
        fwd = Forwarder(tun.fileno(), _table())
        link = FakeLink("b")
        fwd.attach(link)
        app.send(ip4("10.42.0.1", "10.42.0.2"))
        fwd._on_tun_readable()
        assert len(reads) == 1 and len(link.sent) == 1
        for i in range(3):
            app.send(ip4("10.42.0.1", "10.42.0.2", bytes([i])))
        fwd._on_tun_readable()
        assert len(reads) == 1 + 4  # three packets, then the read that finds it empty
        assert len(link.sent) == 4
    finally:
        tun.close()
        app.close()
