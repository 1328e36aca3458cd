"""tunnelmesh-udp passes the public transport conformance suite (asyncio and uvloop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from tunnelmesh.identity import Identity
from tunnelmesh.testing.conformance import TransportConformance, TransportPair

udp = pytest.importorskip("tunnelmesh_udp.transport", reason="tunnelmesh-udp is not installed")


class TestUdpConformance(TransportConformance):
    loops = ("asyncio", "uvloop")

    @asynccontextmanager
    async def make_pair(self) -> AsyncIterator[TransportPair]:
        a, b = Identity.generate(), Identity.generate()
        listener = udp.UdpTransport(b.x25519_private(), listen="127.0.0.1:0")
        listener.update_peer("a", public_key=a.public_raw)

        async def new_dialer() -> udp.UdpTransport:
            return udp.UdpTransport(a.x25519_private(), listen="127.0.0.1:0")

        async def new_stranger() -> udp.UdpTransport:
            return udp.UdpTransport(Identity.generate().x25519_private(), listen="127.0.0.1:0")

        yield TransportPair(
            listener=listener,
            listener_name="b",
            listener_key=b.public_raw,
            endpoints=lambda: [f"127.0.0.1:{listener.local_address[1]}"],
            dialer_name="a",
            new_dialer=new_dialer,
            new_stranger=new_stranger,
        )
        await listener.aclose()
