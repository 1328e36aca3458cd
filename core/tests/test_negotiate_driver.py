"""The path-selection driver (PeerSync + PeerPaths) between two nodes over in-memory "udp" and
"ssh" transports: probes travel in the links and are answered end to end, data still reaches
the forwarder, a blocked path falls back and comes back, the order changes at run time."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from typing import ClassVar

from tunnelmesh.abc import Link, TransportCapabilities
from tunnelmesh.control.messages import PeerInfo
from tunnelmesh.control.peertable import PeerAdded
from tunnelmesh.identity import Identity
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.node.negotiate import NegotiationSettings
from tunnelmesh.node.paths import REPLY, REQUEST, parse_probe, probe_packet
from tunnelmesh.node.peers import PeerSync
from tunnelmesh.testing.memory import MemoryNetwork, MemoryTransport

FAST = NegotiationSettings(
    probe_interval=0.05,
    standby_probe_interval=0.1,
    probe_timeout=0.15,
    dead_after=0.25,
    window=4,
    min_samples=3,
    upgrade_hold=0.1,
    stagger=0.1,
    fallback_stagger=0.05,
    retry_min=0.05,
    retry_max=0.2,
    penalty=0.3,
)


class Wire:
    """A memory network whose links can be blocked (packets silently dropped)."""

    def __init__(self) -> None:
        self.net = MemoryNetwork()
        self.blocked = False

    def guard(self, link: Link) -> Link:
        send = link.send_batch

        def guarded(datagrams: Sequence[bytes]) -> None:
            if not self.blocked:
                send(datagrams)

        link.send_batch = guarded  # type: ignore[method-assign]
        return link


class _Guarded(MemoryTransport):
    wire: Wire

    async def listen(self, on_link: Callable[[Link], None]) -> None:
        await super().listen(lambda link: on_link(self.wire.guard(link)))

    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        return self.wire.guard(await super().dial(peer, endpoints, public_key=public_key))


class MemUdp(_Guarded):
    name: ClassVar[str] = "udp"
    capabilities: ClassVar[TransportCapabilities] = TransportCapabilities(nat_punch=True)


class MemSsh(_Guarded):
    name: ClassVar[str] = "ssh"


def ip_packet(src: str, dst: str, payload: bytes = b"x" * 20) -> bytes:
    total = 20 + len(payload)
    return (
        bytes([0x45, 0]) + total.to_bytes(2, "big") + bytes(4) + bytes([64, 17, 0, 0])
        + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + payload
    )  # fmt: skip


class Node:
    def __init__(self, name: str, ip: str, ident: Identity, udp: Wire, ssh: Wire) -> None:
        self.name, self.ip, self.ident = name, ip, ident
        self.routes = RoutingTable()
        self.delivered: list[bytes] = []
        self.udp = MemUdp(udp.net, name, ident.public_raw)
        self.udp.wire = udp
        self.ssh = MemSsh(ssh.net, name, ident.public_raw)
        self.ssh.wire = ssh
        self.sync = PeerSync(
            self.routes,
            [self.udp, self.ssh],
            lambda link: self.routes.set_link(link.peer, link),
            order=list,
            deliver=lambda link, packets: self.delivered.extend(packets),
            local_ip=ip,
            settings=NegotiationSettings(**FAST.__dict__),
        )

    async def start(self) -> None:
        await self.udp.listen(lambda link: self.sync.on_link(self.udp, link))
        await self.ssh.listen(lambda link: self.sync.on_link(self.ssh, link))

    def info(self) -> PeerInfo:
        return PeerInfo(
            name=self.name,
            peer_id=self.ident.peer_id,
            public_key=self.ident.public_openssh,
            wg_public_key="",
            mesh_ip=self.ip,
            endpoints=[self.udp.endpoint, self.ssh.endpoint],
        )


async def until(cond: Callable[[], bool], limit: float = 5.0) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not cond():
        assert loop.time() - start < limit, "condition not met in time"
        await asyncio.sleep(0.01)
    return loop.time() - start


def test_probe_packets_are_valid_ipv4_and_parse_back() -> None:
    pkt = probe_packet(bytes([172, 30, 0, 1]), bytes([172, 30, 0, 2]), REQUEST, b"abcd", 7)
    assert pkt[0] == 0x45 and int.from_bytes(pkt[2:4], "big") == len(pkt) == 36
    words = [int.from_bytes(pkt[i : i + 2], "big") for i in range(0, 20, 2)]
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF  # the header checksum is right
    assert parse_probe(pkt) == (REQUEST, b"abcd", 7)
    assert parse_probe(ip_packet("172.30.0.1", "172.30.0.2")) is None
    bad = bytearray(pkt)
    bad[20:24] = b"XXXX"
    assert parse_probe(bytes(bad)) is None
    assert parse_probe(pkt[:30]) is None
    assert REPLY != REQUEST


def test_two_nodes_probe_fall_back_come_back_and_follow_the_order() -> None:
    async def main() -> None:
        udp, ssh = Wire(), Wire()
        a = Node("a", "172.30.0.1", Identity.generate(), udp, ssh)
        b = Node("b", "172.30.0.2", Identity.generate(), udp, ssh)
        for n in (a, b):
            await n.start()
        a.sync.apply(PeerAdded(b.info()))
        b.sync.apply(PeerAdded(a.info()))
        try:
            await until(lambda: a.sync.link_transport.get("b") == "udp")
            await until(lambda: b.sync.link_transport.get("a") == "udp")
            # probes are answered on the link (RTT known) and never reach the forwarder
            await until(lambda: a.sync.rtt_ms().get("b") is not None)
            link = a.routes.peers["b"].link
            assert link is not None
            link.send_batch([ip_packet(a.ip, b.ip)])
            await until(lambda: bool(b.delivered))
            assert all(parse_probe(p) is None for p in b.delivered + a.delivered)

            udp.blocked = True
            took = await until(lambda: a.sync.link_transport.get("b") == "ssh", limit=3)
            await until(lambda: b.sync.link_transport.get("a") == "ssh", limit=3)
            assert "udp: no answer" in a.sync.reasons()["b"]
            assert a.routes.peers["b"].link in a.ssh.links
            assert took < 1.5

            udp.blocked = False
            await until(lambda: a.sync.link_transport.get("b") == "udp", limit=3)
            assert a.sync.paths["b"].describe()["paths"]["udp"]["state"] == "good"

            # run-time order (the admin UI's API): ssh first for b only, then global again
            a.sync.set_order(["ssh", "udp"], peer="b")
            await until(lambda: a.sync.link_transport.get("b") == "ssh", limit=3)
            a.sync.set_order(None, peer="b")
            await until(lambda: a.sync.link_transport.get("b") == "udp", limit=3)
            try:
                a.sync.set_order(["carrier-pigeon"])
            except ValueError as exc:
                assert "carrier-pigeon" in str(exc)
            else:
                raise AssertionError("unknown transport accepted")
        finally:
            for n in (a, b):
                await n.sync.aclose()
                await n.udp.aclose()
                await n.ssh.aclose()

    asyncio.run(main())
