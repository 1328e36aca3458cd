"""UdpTransport: STUN from the transport's own socket (loopback STUN server), the data path
untouched afterwards, and persistent keepalives for the peers of a mesh node."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tunnelmesh.abc import StunProber
from tunnelmesh.identity import Identity
from tunnelmesh.stun import StunResponder
from tunnelmesh_udp.transport import UdpTransport


class _Stun(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.responder = StunResponder()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.responder.handle(data, addr)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


def test_stun_from_the_transport_socket_then_the_data_path_is_restored() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server, proto = await loop.create_datagram_endpoint(_Stun, local_addr=("127.0.0.1", 0))
        port = server.get_extra_info("sockname")[1]
        t = UdpTransport(Identity.generate().x25519_private(), listen="127.0.0.1:0")
        await t.listen(lambda link: None)
        try:
            mapped = await t.stun("127.0.0.1", port, timeout=1.0)
            assert mapped == ("127.0.0.1", t.local_address[1])
            assert proto.responder.requests >= 1
            assert "receive_datagram" not in vars(t.engine)  # the wrapper is gone
            # nobody answering: None after the attempts, wrapper gone as well
            server.close()
            assert await t.stun("127.0.0.1", port, timeout=0.1, attempts=2) is None
            assert "receive_datagram" not in vars(t.engine)
        finally:
            await t.aclose()
            server.close()

    asyncio.run(main())


def test_mesh_nodes_keep_nat_mappings_open_with_keepalives() -> None:
    async def main() -> None:
        ident, peer = Identity.generate(), Identity.generate()
        node = SimpleNamespace(
            x25519_private_key=ident.x25519_private(),
            listen_address="127.0.0.1:0",
            config=SimpleNamespace(tun=SimpleNamespace(mtu=1420)),
        )
        t = UdpTransport.from_node(node)
        assert t.keepalive == 25.0
        t.update_peer("beta", public_key=peer.public_raw, endpoints=["127.0.0.1:9"])
        wg = t.engine.peer_by_name("beta")
        assert wg is not None and wg.persistent_keepalive == 25.0
        t.update_peer("beta", public_key=peer.public_raw, endpoints=["127.0.0.1:10"])
        assert wg.persistent_keepalive == 25.0  # an endpoint update keeps it
        plain = UdpTransport(ident.x25519_private(), listen="127.0.0.1:0")
        plain.update_peer("beta", public_key=peer.public_raw)
        assert plain.engine.peer_by_name("beta").persistent_keepalive == 0  # type: ignore[union-attr]

    asyncio.run(main())


def test_the_node_finds_the_udp_transport_as_a_stun_prober() -> None:
    """The node asks ``isinstance(t, StunProber)`` for the transport that learns the reflexive
    address after a network change; the UDP transport is one."""
    t = UdpTransport(Identity.generate().x25519_private(), listen="127.0.0.1:0")
    assert isinstance(t, StunProber)
