"""tunnelmesh-relay passes the transport conformance suite through a real coordinator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tunnelmesh.testing.conformance import TransportConformance, TransportPair
from tunnelmesh_relay.testing import RelayMesh
from tunnelmesh_relay.transport import RelayTransport


class TestRelayConformance(TransportConformance):
    loops = ("asyncio", "uvloop")

    @asynccontextmanager
    async def make_pair(self) -> AsyncIterator[TransportPair]:
        async with RelayMesh(None, ["a", "b", "c"]) as mesh:
            listener = mesh.transport("b")
            listener.update_peer("a", public_key=mesh.identities["a"].public_raw)

            async def new_dialer() -> RelayTransport:
                return mesh.transport("a", handshake_timeout=3.0)

            async def new_stranger() -> RelayTransport:
                # "c" is a registered peer of the mesh, but b was never told about it
                return mesh.transport("c", handshake_timeout=3.0)

            yield TransportPair(
                listener=listener,
                listener_name="b",
                listener_key=mesh.identities["b"].public_raw,
                endpoints=lambda: ["relay"],
                dialer_name="a",
                new_dialer=new_dialer,
                new_stranger=new_stranger,
            )
            await listener.aclose()
