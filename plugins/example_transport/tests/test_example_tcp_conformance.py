"""The example transport passes tunnelmesh's public transport conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tunnelmesh.identity import Identity
from tunnelmesh.testing import TransportConformance, TransportPair
from tunnelmesh_example_tcp import TcpTransport


class TestExampleTcpConformance(TransportConformance):
    loops = ("asyncio", "uvloop")

    @asynccontextmanager
    async def make_pair(self) -> AsyncIterator[TransportPair]:
        a, b = Identity.generate(), Identity.generate()
        listener = TcpTransport(b.x25519_private(), listen="127.0.0.1:0")
        listener.update_peer("a", public_key=a.public_raw)

        async def new_dialer() -> TcpTransport:
            return TcpTransport(a.x25519_private(), listen="127.0.0.1:0", handshake_timeout=3.0)

        async def new_stranger() -> TcpTransport:
            key = Identity.generate().x25519_private()
            return TcpTransport(key, listen="127.0.0.1:0", handshake_timeout=3.0)

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
