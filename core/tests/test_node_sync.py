"""PeerSync (coordinator events -> routing table, transports, DNS) and endpoint ordering, with
in-memory transports: no sockets, no TUN."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence

from tunnelmesh.abc import Link, Transport
from tunnelmesh.control.messages import PeerInfo
from tunnelmesh.control.peertable import (
    PeerAdded,
    PeerChanged,
    PeerRemoved,
    RendezvousRequested,
)
from tunnelmesh.dns import CoordinatorBackend
from tunnelmesh.errors import TransportError
from tunnelmesh.identity import Identity
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.node.endpoints import order_endpoints
from tunnelmesh.node.peers import PeerSync, raw_public_key


class FakeLink(Link):
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.mtu = 1420
        self.closed = False

    def send_batch(self, datagrams: Sequence[bytes]) -> None:
        pass

    async def recv_batch(self) -> list[bytes]:
        raise TransportError("fake")

    async def aclose(self) -> None:
        self.closed = True


class FakeTransport(Transport):
    name = "fake"

    def __init__(self, answers: bool = True) -> None:
        self.answers = answers
        self.updates: list[tuple[str, bytes, list[str]]] = []
        self.dials: list[tuple[str, list[str]]] = []
        self.links: dict[str, FakeLink] = {}

    async def listen(self, on_link: Callable[[Link], None]) -> None:
        pass

    def update_peer(
        self, peer: str, *, public_key: bytes = b"", endpoints: Sequence[str] = ()
    ) -> None:
        self.updates.append((peer, public_key, list(endpoints)))

    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        self.dials.append((peer, list(endpoints)))
        if not self.answers:
            raise TransportError(f"no answer from {peer}")
        return self.links.setdefault(peer, FakeLink(peer))

    async def aclose(self) -> None:
        pass


def info(name: str, ip: str, endpoints: list[str], ident: Identity, **kw: object) -> PeerInfo:
    return PeerInfo(
        name=name,
        peer_id=ident.peer_id,
        public_key=ident.public_openssh,
        wg_public_key="",
        mesh_ip=ip,
        endpoints=endpoints,
        **kw,  # type: ignore[arg-type]
    )


def keep_order(endpoints: Sequence[str]) -> list[str]:
    return list(endpoints)


class Harness:
    def __init__(self, answers: bool = True) -> None:
        self.routes = RoutingTable()
        self.transport = FakeTransport(answers)
        self.attached: list[Link] = []
        self.rendezvous: list[str] = []
        self.lines: list[str] = []
        self.dns = CoordinatorBackend()

        async def rendezvous(peer: str) -> None:
            self.rendezvous.append(peer)

        def attach(link: Link) -> None:
            self.attached.append(link)
            self.routes.set_link(link.peer, link)

        self.sync = PeerSync(
            self.routes,
            [self.transport],
            attach,
            dns=self.dns,
            rendezvous=rendezvous,
            notify=self.lines.append,
            order=keep_order,
        )
        self.sync.retry_delay = 0.01

    async def settle(self, until: Callable[[], bool] = lambda: True, limit: float = 2.0) -> None:
        """Let the dial tasks run (bounded)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while True:
            await asyncio.sleep(0)
            pending = [t for t in self.sync.dials.values() if not t.done()]
            if until() and not pending:
                return
            if loop.time() > end:
                return
            await asyncio.sleep(0.005)


def packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def test_added_peer_gets_route_key_link_and_name() -> None:
    a = Identity.generate()

    async def main() -> None:
        h = Harness()
        h.sync.apply(PeerAdded(info("alpha", "172.30.0.7", ["192.0.2.7:2223"], a)))
        await h.settle(lambda: bool(h.attached))
        route = h.routes.lookup(packed("172.30.0.7"))
        assert route is not None and route.name == "alpha"
        assert route.public_key == raw_public_key(a.public_openssh) == a.public_raw
        assert h.transport.updates == [("alpha", a.public_raw, ["192.0.2.7:2223"])]
        assert h.transport.dials == [("alpha", ["192.0.2.7:2223"])]
        assert route.link is h.transport.links["alpha"]
        assert h.lines == ["link up: alpha via fake"]
        assert h.dns.lookup("alpha", "A") == ["172.30.0.7"]
        await h.sync.aclose()

    asyncio.run(main())


def test_no_dial_before_endpoints_then_dial_when_they_arrive() -> None:
    a = Identity.generate()

    async def main() -> None:
        h = Harness()
        first = info("alpha", "172.30.0.7", [], a)
        h.sync.apply(PeerAdded(first))
        await h.settle()
        assert h.transport.dials == [] and h.routes.peers["alpha"].link is None
        # the transport knows the key at once, so the peer may reach us first
        assert h.transport.updates == [("alpha", a.public_raw, [])]
        second = info("alpha", "172.30.0.7", ["192.0.2.7:2223"], a)
        h.sync.apply(PeerChanged(second, first))
        await h.settle(lambda: bool(h.attached))
        assert h.transport.dials == [("alpha", ["192.0.2.7:2223"])]
        # an online flip changes nothing on the data plane
        h.sync.apply(
            PeerChanged(info("alpha", "172.30.0.7", ["192.0.2.7:2223"], a, online=True), second)
        )
        await h.settle()
        assert len(h.transport.updates) == 2 and len(h.transport.dials) == 1
        await h.sync.aclose()

    asyncio.run(main())


def test_removed_peer_loses_route_transport_state_link_and_name() -> None:
    a = Identity.generate()

    async def main() -> None:
        h = Harness()
        p = info("alpha", "172.30.0.7", ["192.0.2.7:2223"], a)
        h.sync.apply(PeerAdded(p))
        await h.settle(lambda: bool(h.attached))
        h.sync.apply(PeerRemoved(p))
        await h.settle(lambda: h.transport.links["alpha"].closed)
        assert h.routes.lookup(packed("172.30.0.7")) is None and "alpha" not in h.routes.peers
        assert h.transport.updates[-1] == ("alpha", b"", [])
        assert h.transport.links["alpha"].closed
        assert h.dns.lookup("alpha", "A") is None
        assert h.lines[-1] == "link down: alpha (left the mesh)"
        await h.sync.aclose()

    asyncio.run(main())


def test_rename_moves_the_route() -> None:
    a = Identity.generate()

    async def main() -> None:
        h = Harness()
        old = info("alpha", "172.30.0.7", ["192.0.2.7:2223"], a)
        h.sync.apply(PeerAdded(old))
        await h.settle(lambda: bool(h.attached))
        new = info("alpha2", "172.30.0.7", ["192.0.2.7:2223"], a)
        h.sync.apply(PeerChanged(new, old))
        await h.settle(lambda: "alpha2" in h.transport.links)
        route = h.routes.lookup(packed("172.30.0.7"))
        assert route is not None and route.name == "alpha2"
        assert "alpha" not in h.routes.peers and h.dns.lookup("alpha", "A") is None
        assert h.dns.lookup("alpha2", "A") == ["172.30.0.7"]
        await h.sync.aclose()

    asyncio.run(main())


def test_unanswered_dial_asks_a_rendezvous_once_and_retries() -> None:
    a = Identity.generate()

    async def main() -> None:
        h = Harness(answers=False)
        h.sync.apply(PeerAdded(info("alpha", "172.30.0.7", ["192.0.2.7:2223"], a)))
        await h.settle(lambda: len(h.transport.dials) >= 3)
        assert len(h.transport.dials) >= 3
        assert h.rendezvous == ["alpha"]
        # a link from the other side ends the dialling
        h.sync.on_link(h.transport, FakeLink("alpha"))
        await h.settle(lambda: all(t.done() for t in h.sync.dials.values()), limit=3)
        assert all(t.done() for t in h.sync.dials.values())
        assert h.routes.peers["alpha"].link is not None
        await h.sync.aclose()

    asyncio.run(main())


def test_incoming_link_for_an_unknown_peer_is_ignored_and_rendezvous_dials() -> None:
    a = Identity.generate()

    async def main() -> None:
        h = Harness()
        h.sync.on_link(h.transport, FakeLink("stranger"))
        assert h.attached == []
        h.sync.apply(PeerAdded(info("alpha", "172.30.0.7", [], a)))
        h.sync.apply(RendezvousRequested("alpha", a.peer_id, ("198.51.100.9:40000",)))
        await h.settle(lambda: bool(h.attached))
        assert h.transport.dials == [("alpha", ["198.51.100.9:40000"])]
        h.sync.apply(RendezvousRequested("nobody", "0", ("198.51.100.9:1",)))
        await h.settle()
        assert len(h.transport.dials) == 1
        await h.sync.aclose()

    asyncio.run(main())


def test_endpoint_order() -> None:
    ifaces = [
        ipaddress.IPv4Interface("127.0.0.1/8"),
        ipaddress.IPv4Interface("192.168.1.10/24"),
        ipaddress.IPv4Interface("172.30.0.5/16"),  # the TUN device
    ]
    unroutable = {"10.77.1.2"}
    got = order_endpoints(
        [
            "10.77.1.2:2223",  # someone's LAN behind a NAT: no route from here
            "10.9.9.9:2223",  # private, routable: maybe another host, so late
            "100.64.0.9:2223",  # public (reflexive; shared address space counts)
            "192.168.1.20:2223",  # on our own link: first
            "127.0.0.1:2223",
            "192.168.1.10:2223",  # ourselves
            "172.30.0.9:2223",  # inside the mesh
            "garbage",
            "100.64.0.9:2223",
        ],
        interfaces=ifaces,
        exclude=["172.30.0.0/16"],
        is_routable=lambda host: host not in unroutable,
    )
    assert got == ["192.168.1.20:2223", "100.64.0.9:2223", "10.9.9.9:2223"]


def test_the_end_with_the_larger_key_lets_the_other_dial_first() -> None:
    a, b = Identity.generate(), Identity.generate()

    async def main() -> None:
        h = Harness()
        h.sync.local_key = b"\xff" * 32  # larger than any key: the passive end
        h.sync.passive_delay = 0.2
        h.sync.apply(PeerAdded(info("alpha", "172.30.0.7", ["192.0.2.7:2223"], a)))
        await asyncio.sleep(0.05)
        h.sync.on_link(h.transport, FakeLink("alpha"))  # alpha dialled us first
        await h.settle()
        assert h.transport.dials == []  # so no crossing handshake from our side
        h.sync.apply(PeerAdded(info("beta", "172.30.0.8", ["192.0.2.8:2223"], b)))
        await h.settle(lambda: "beta" in h.transport.links)
        assert h.transport.dials == [("beta", ["192.0.2.8:2223"])]  # beta did not: we do
        h.sync.local_key = b"\x00" * 32
        await h.sync.aclose()

    asyncio.run(main())
