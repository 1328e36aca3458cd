"""The transport conformance suite passes the in-memory transport and catches broken ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import pytest
from tunnelmesh.abc import Link, Packet
from tunnelmesh.errors import TransportError
from tunnelmesh.identity import Identity
from tunnelmesh.testing.conformance import (
    CHECKS,
    ConformanceError,
    TransportConformance,
    TransportPair,
    check_transport,
    make_packet,
    packet_seq,
)
from tunnelmesh.testing.memory import MemoryLink, MemoryNetwork, MemoryTransport


def pair_factory(
    cls: type[MemoryTransport] = MemoryTransport,
) -> Callable[[], AsyncIterator[TransportPair]]:
    @asynccontextmanager
    async def make_pair() -> AsyncIterator[TransportPair]:
        net = MemoryNetwork()
        key_a, key_b = Identity.generate().public_raw, Identity.generate().public_raw
        listener = cls(net, "b", key_b)
        listener.update_peer("a", public_key=key_a)

        async def new_dialer() -> MemoryTransport:
            return cls(net, "a", key_a)

        async def new_stranger() -> MemoryTransport:
            return cls(net, "c", Identity.generate().public_raw)

        yield TransportPair(
            listener=listener,
            listener_name="b",
            listener_key=key_b,
            endpoints=lambda: [listener.endpoint],
            dialer_name="a",
            new_dialer=new_dialer,
            new_stranger=new_stranger,
        )
        await listener.aclose()

    return make_pair  # type: ignore[return-value]


class TestMemoryTransport(TransportConformance):
    loops = ("asyncio", "uvloop")

    def make_pair(self):  # type: ignore[no-untyped-def]
        return pair_factory()()


def test_packets_carry_their_sequence_number() -> None:
    for size in (20, 21, 1420, 65535):
        pkt = make_packet(0x123456, size, 1)
        assert len(pkt) == size
        assert int.from_bytes(pkt[2:4], "big") == size
        assert packet_seq(pkt) == 0x123456
    with pytest.raises(ValueError):
        make_packet(1, 19)


# --- broken transports: each must fail the check named ----------------------------------------


class IgnoresKeys(MemoryTransport):
    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        other = self.network.listeners[endpoints[0]]
        return await super().dial(peer, endpoints, public_key=other.public_key)


class AcceptsStrangers(MemoryTransport):
    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        for endpoint in endpoints:
            other = self.network.listeners.get(endpoint)
            if other is not None:
                other.known.setdefault(self.peer_name, self.public_key)
        return await super().dial(peer, endpoints, public_key=public_key)


class DropsLarge(MemoryLink):
    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        super().send_batch([d for d in datagrams if len(d) < 1000])


class Reorders(MemoryLink):
    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        super().send_batch(list(reversed(datagrams)))


class KeepsReceiving(MemoryLink):
    async def aclose(self) -> None:
        self.closed = True  # no wake-up for a pending recv_batch

    async def recv_batch(self) -> list[bytes]:
        return await self._queue.get()


class DropsEveryFiftieth(MemoryLink):
    count = 0

    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        keep = []
        for d in datagrams:
            DropsEveryFiftieth.count += 1
            if DropsEveryFiftieth.count % 50:
                keep.append(d)
        super().send_batch(keep)


class NoRedial(MemoryTransport):
    dials = 0

    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        NoRedial.dials += 1
        if NoRedial.dials > 1:
            raise TransportError("cannot dial twice")
        return await super().dial(peer, endpoints, public_key=public_key)


def with_link(link_cls: type[MemoryLink]) -> type[MemoryTransport]:
    class T(MemoryTransport):
        async def dial(
            self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b""
        ) -> Link:
            link = await super().dial(peer, endpoints, public_key=public_key)
            assert isinstance(link, MemoryLink) and link.other is not None
            link.__class__ = link_cls
            link.other.__class__ = link_cls
            return link

    return T


@pytest.mark.parametrize(
    ("transport", "check", "message"),
    [
        (IgnoresKeys, "handshake", "wrong public key returned a link"),
        (AcceptsStrangers, "strangers", "does not know succeeded"),
        (with_link(DropsLarge), "sizes", "received 0 of 1 packets"),
        (with_link(Reorders), "both_directions", "says ordered"),
        (with_link(KeepsReceiving), "close", "did not return"),
        (with_link(DropsEveryFiftieth), "batches", "of 100 packets"),
        (NoRedial, "reconnect", "cannot dial twice"),
    ],
)
def test_suite_catches_a_broken_transport(
    transport: type[MemoryTransport], check: str, message: str
) -> None:
    NoRedial.dials = 0

    async def main() -> None:
        with pytest.raises((ConformanceError, TransportError), match=message):
            await CHECKS[check](pair_factory(transport), timeout=1.0)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_check_transport_names_the_failing_check() -> None:
    async def main() -> None:
        with pytest.raises(ConformanceError, match=r"^both_directions: "):
            await check_transport(pair_factory(with_link(DropsLarge)), timeout=1.0)

    asyncio.run(asyncio.wait_for(main(), 30))
