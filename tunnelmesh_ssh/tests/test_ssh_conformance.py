"""tunnelmesh-ssh passes the transport conformance suite over loopback (asyncio and uvloop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tunnelmesh.identity import Identity
from tunnelmesh.testing.conformance import TransportConformance, TransportPair
from tunnelmesh_ssh.transport import SshTransport


class TestSshConformance(TransportConformance):
    loops = ("asyncio", "uvloop")

    @asynccontextmanager
    async def make_pair(self) -> AsyncIterator[TransportPair]:
        a, b = Identity.generate(), Identity.generate()
        listener = SshTransport(b, "b", listen="127.0.0.1:0")
        listener.update_peer("a", public_key=a.public_raw)

        async def new_dialer() -> SshTransport:
            return SshTransport(a, "a", listen="127.0.0.1:0")

        async def new_stranger() -> SshTransport:
            return SshTransport(Identity.generate(), "c", listen="127.0.0.1:0")

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
