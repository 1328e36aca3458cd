"""WireGuardSession without a socket: two sessions whose transmit callables feed each other.

The carrier here is a list the test drains by hand, so every transmit is visible in order:
handshake both ways, links announced as configured, packets grouped per peer, a rekey
initiation ahead of its burst, keepalives, and close waking a pending receive.
"""

from __future__ import annotations

import asyncio
import random
import struct
from typing import Any

import pytest
from tunnelmesh.abc import Link
from tunnelmesh.aio.wgsession import WireGuardLink, WireGuardSession
from tunnelmesh.errors import TransportError
from tunnelmesh.proto import HandshakeCompleted, WireGuard


def _packet(i: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 24, 0, 0, 64, 17, 0, b"\n*\0\1", b"\n*\0\2")
    return header + i.to_bytes(4, "big")


class Pair:
    """Sessions ``a`` and ``b``; ``wire`` holds (sender, messages, address) per transmit."""

    def __init__(self, *, announce_dialled: bool = True) -> None:
        rng = random.Random(16)
        self.wire: list[tuple[str, list[bytes], Any]] = []
        self.links: dict[str, list[WireGuardLink]] = {"a": [], "b": []}
        self.events: dict[str, list[object]] = {"a": [], "b": []}
        engines = {n: WireGuard(rng.randbytes(32), rng=rng.randbytes) for n in "ab"}
        self.sessions: dict[str, WireGuardSession] = {}
        for name, engine in engines.items():
            self.sessions[name] = WireGuardSession(
                engine,
                lambda msgs, addr, n=name: self.wire.append((n, list(msgs), addr)),
                on_link=self.links[name].append,
                on_event=self.events[name].append,
                announce_dialled=announce_dialled,
                link_kind="test link",
            )
            self.sessions[name].start()
        self.peer_b = engines["a"].add_peer(engines["b"].public_key, name="b", endpoint="to-b")
        self.peer_a = engines["b"].add_peer(engines["a"].public_key, name="a", endpoint="to-a")

    @property
    def a(self) -> WireGuardSession:
        return self.sessions["a"]

    @property
    def b(self) -> WireGuardSession:
        return self.sessions["b"]

    def carry(self) -> int:
        """Deliver everything on the wire (and what that sends) until it is quiet."""
        count = 0
        while self.wire:
            sender, msgs, addr = self.wire.pop(0)
            receiver = self.b if sender == "a" else self.a
            assert addr == ("to-b" if sender == "a" else "to-a")
            receiver.receive(msgs, "to-a" if sender == "a" else "to-b")
            count += len(msgs)
        return count


def run(coro: Any) -> None:
    asyncio.run(coro)


def test_handshake_packets_both_ways_and_grouped_per_peer() -> None:
    async def main() -> None:
        p = Pair()
        link = p.a.link_for(p.peer_b)
        link.send_batch([_packet(0), _packet(1)])  # staged until the handshake completes
        assert [m[0] for _s, msgs, _a in p.wire for m in msgs] == [1]  # one initiation
        p.carry()
        # b learned of a link from a; a's link existed already, so nothing was announced
        assert [lk.peer for lk in p.links["b"]] == ["a"]
        assert p.links["a"] == []
        got: list[list[bytes]] = []
        p.links["b"][0].set_receiver(lambda _lk, pkts: got.append(pkts))
        assert got == [[_packet(0), _packet(1)]]  # the staged packets, one batch
        link.send_batch([_packet(i) for i in range(2, 12)])
        assert len(p.wire) == 1  # one run to one address
        p.carry()
        assert got[1] == [_packet(i) for i in range(2, 12)]  # one delivery per peer per batch
        p.links["b"][0].send_batch([_packet(99)])
        p.carry()
        assert await link.recv_batch() == [_packet(99)]
        assert [type(e) for e in p.events["a"]] == [HandshakeCompleted]
        assert not p.a.drops and not p.b.drops

    run(main())


@pytest.mark.parametrize("announce", [True, False])
def test_dialled_links_are_announced_unless_told_not_to(announce: bool) -> None:
    async def main() -> None:
        p = Pair(announce_dialled=announce)
        p.a.initiate(p.peer_b)
        p.carry()
        assert [lk.peer for lk in p.links["a"]] == (["b"] if announce else [])
        assert [lk.peer for lk in p.links["b"]] == ["a"]
        assert p.peer_b.public_key in p.a.links  # made, for dial() to return

    run(main())


def test_rekey_initiation_leaves_before_the_burst() -> None:
    async def main() -> None:
        p = Pair()
        link = p.a.link_for(p.peer_b)
        link.send_batch([_packet(0)])
        p.carry()
        p.a.engine.rekey_after_time = 0.0
        p.peer_b.last_sent_handshake = None
        link.send_batch([_packet(i) for i in range(1, 51)])
        kinds = [m[0] for _s, msgs, _a in p.wire for m in msgs]
        assert kinds == [1] + [4] * 50

    run(main())


def test_keepalives_only_for_peers_with_a_session() -> None:
    async def main() -> None:
        p = Pair()
        p.a.engine.add_peer(random.Random(1).randbytes(32), name="quiet", endpoint="to-q")
        assert p.a.send_keepalives() == 0
        p.a.initiate(p.peer_b)
        p.carry()
        assert p.a.send_keepalives() == 1
        assert [(len(msgs[0]), addr) for _s, msgs, addr in p.wire] == [(32, "to-b")]

    run(main())


def test_close_ends_every_link_and_wakes_a_pending_receive() -> None:
    async def main() -> None:
        p = Pair()
        link: Link = p.a.link_for(p.peer_b)
        links = p.a.links  # the dict a transport holds as its own ``links``
        waiter = asyncio.create_task(link.recv_batch())
        await asyncio.sleep(0)
        p.a.close()
        assert p.a.links is links and not links
        with pytest.raises(TransportError, match="test link to b is closed"):
            await asyncio.wait_for(waiter, 1.0)
        with pytest.raises(TransportError):
            link.send_batch([_packet(0)])
        assert p.a.links == {}
        p.a.close()  # idempotent

    run(main())


def test_a_closed_link_leaves_the_session_and_the_next_data_makes_a_new_one() -> None:
    async def main() -> None:
        p = Pair()
        link = p.a.link_for(p.peer_b)
        link.send_batch([_packet(0)])
        p.carry()
        incoming = p.links["b"][0]
        await incoming.aclose()
        assert p.peer_a.public_key not in p.b.links
        link.send_batch([_packet(1)])
        p.carry()
        assert len(p.links["b"]) == 2 and p.links["b"][1] is not incoming
        assert await p.links["b"][1].recv_batch() == [_packet(1)]

    run(main())


def test_the_loop_timer_follows_the_earliest_deadline_without_a_scan_per_batch() -> None:
    async def main() -> None:
        p = Pair()
        link = p.a.link_for(p.peer_b)
        link.send_batch([_packet(0)])
        p.carry()
        for s in (p.a, p.b):  # armed, at or before every deadline of the engine
            assert s._timer_at is not None and s._timer_at <= s.engine.get_timer()  # type: ignore[operator]
        armed = p.a._timer_at
        link.send_batch([_packet(1)])  # later deadlines only: the timer stays where it was
        assert p.a._timer_at == armed and p.a.engine.timer_floor > armed  # type: ignore[operator]
        # a deadline before the armed one (a 1 s persistent keepalive, set by the next batch)
        p.peer_b.persistent_keepalive = 1.0
        link.send_batch([_packet(2)])
        assert p.peer_b.persistent_at is not None
        assert p.a._timer_at == p.peer_b.persistent_at < armed  # type: ignore[operator]
        # the timer fires with nothing due yet (early): re-armed at the deadlines still ahead
        p.peer_b.persistent_keepalive = 0.0
        p.peer_b.persistent_at = None
        handle = p.a._timer
        assert handle is not None
        handle.cancel()
        p.a._on_timer()
        assert p.a._timer_at == p.a.engine.get_timer() is not None
        assert p.a.engine.timer_floor == float("inf")  # reset by the session's scan

    run(main())
