"""WireGuard.receive_batch is receive_datagram on each datagram, in one call.

Two receivers with the same key and the same random source get the same datagrams, one by one
and in batches; everything they return, count, queue and emit must be the same: packets per
peer, drops, events, datagrams to send, and each peer's counters, timers and keypairs.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from tunnelmesh.proto import Peer, WireGuard
from tunnelmesh.proto.wgmessages import KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME

PEER_FIELDS = (
    "endpoint",
    "keepalive_at",
    "need_another_keepalive",
    "new_handshake_at",
    "persistent_at",
    "retransmit_at",
    "rx_bytes",
    "rx_packets",
    "sent_last_minute_handshake",
    "handshake_attempts",
    "last_sent_handshake",
)
SENDER = ("192.0.2.1", 51820)
ROAMED = ("192.0.2.9", 4000)


def _ip(i: int, size: int = 60) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, size, i & 0xFFFF, 0, 64, 17, 0, b"\n*\0\1", b"\n*\0\2"
    )
    return header + bytes(size - 20)


class Twins:
    """A sender and two identical receivers: ``one`` fed one by one, ``batch`` in batches."""

    def __init__(self, keepalive: float = 0.0, views: bool = False) -> None:
        self.views = views
        key = random.Random(3).randbytes(32)
        self.sender = WireGuard(random.Random(4).randbytes(32), rng=random.Random(5).randbytes)
        self.one = WireGuard(key, rng=random.Random(6).randbytes)
        self.batch = WireGuard(key, rng=random.Random(6).randbytes)
        self.to = self.sender.add_peer(self.one.public_key, name="r", endpoint=("192.0.2.2", 1))
        for r in (self.one, self.batch):
            r.add_peer(self.sender.public_key, name="s", persistent_keepalive=keepalive)
        self.got_one: list[tuple[str, bytes]] = []
        self.got_batch: dict[Peer, list[bytes]] = {}

    def twins(self) -> tuple[WireGuard, WireGuard]:
        return self.one, self.batch

    def handshake(self, now: float) -> None:
        self.sender.initiate(self.to, now)
        (init,) = [d for d, _a in self.sender.datagrams_to_send()]
        self.feed([init], now)
        (resp_one,) = [d for d, _a in self.one.datagrams_to_send()]
        (resp_batch,) = [d for d, _a in self.batch.datagrams_to_send()]
        assert resp_one == resp_batch
        assert self.sender.receive_datagram(resp_one, ("192.0.2.2", 1), now) is None
        self.sender.datagrams_to_send()  # the keepalive that confirms the session

    def feed(self, datagrams: list[bytes], now: float, addr: Any = SENDER) -> None:
        for d in datagrams:
            result = self.one.receive_datagram(d, addr, now)
            if result is not None:
                self.got_one.append((result[0].name, result[1]))
        if not self.views:
            assert self.batch.receive_batch(datagrams, addr, now, self.got_batch) == len(datagrams)
            return
        # as the UDP socket hands them over: views of one receive buffer, reused afterwards
        buf = bytearray(b"".join(datagrams))
        views, off = [], 0
        for d in datagrams:
            views.append(memoryview(buf)[off : off + len(d)])
            off += len(d)
        assert self.batch.receive_batch(views, addr, now, self.got_batch) == len(datagrams)
        buf[:] = bytes(len(buf))  # nothing the engine kept may still point into the buffer

    def check_same(self) -> None:
        got_batch = [(p.name, pkt) for p, pkts in self.got_batch.items() for pkt in pkts]
        assert got_batch == self.got_one
        assert dict(self.batch.drops) == dict(self.one.drops)
        assert self.batch.datagrams_to_send() == self.one.datagrams_to_send()
        events_one, events_batch = [], []
        while (e := self.one.next_event()) is not None:
            events_one.append(e)
        while (e := self.batch.next_event()) is not None:
            events_batch.append(e)
        assert events_batch == events_one
        (p1,) = self.one.peers.values()
        (p2,) = self.batch.peers.values()
        for field in PEER_FIELDS:
            assert getattr(p2, field) == getattr(p1, field), field
        for slot in ("previous", "current", "next"):
            k1, k2 = getattr(p1, slot), getattr(p2, slot)
            assert (k1 and k1.remote_index) == (k2 and k2.remote_index), slot


@pytest.mark.parametrize("views", [False, True], ids=["bytes", "views"])
@pytest.mark.parametrize("keepalive", [0.0, 25.0])
def test_batches_equal_one_by_one(keepalive: float, views: bool) -> None:
    t = Twins(keepalive, views)
    t.handshake(0.0)
    seal = t.sender.encrypt_batch
    data = seal(t.to, [_ip(i) for i in range(10)], 1.0)
    t.feed(data[:4], 1.0)  # the first data message confirms the responder's keypair
    t.feed(data[4:], 1.0)
    t.check_same()
    # the keepalive timers ran out (none owed), then a run of data: one owed, and another
    for now in (1.0 + KEEPALIVE_TIMEOUT, 1.0 + 2 * KEEPALIVE_TIMEOUT):
        for r in t.twins():
            r.handle_timer(now)
        t.check_same()
    (p,) = t.batch.peers.values()
    assert p.keepalive_at is None and not p.need_another_keepalive
    now = 1.0 + 2 * KEEPALIVE_TIMEOUT
    t.feed(seal(t.to, [_ip(50), _ip(51), _ip(52)], now), now)
    t.check_same()
    assert p.keepalive_at is not None and p.need_another_keepalive
    # keepalives, a replay, a forged tag, a short and a garbage datagram, a bad inner packet
    t.sender.send_keepalive(t.to, 2.0)
    (keepalive_msg,) = [d for d, _a in t.sender.datagrams_to_send()]
    more = seal(t.to, [_ip(100), _ip(101)], 2.0)
    forged = more[1][:-1] + bytes([more[1][-1] ^ 1])
    bad_inner = seal(t.to, [b"\x45" + bytes(30)], 2.0)  # length field says 0
    batch = [more[0], keepalive_msg, data[3], forged, b"\x04\0\0", bytes(40), *bad_inner]
    t.feed(batch, 2.0)
    t.check_same()
    # the sender roams: one event, both see the new endpoint
    t.feed(seal(t.to, [_ip(200 + i) for i in range(5)], 3.0), 3.0, addr=ROAMED)
    t.check_same()
    # a rekey in the middle of a batch: old keypair, handshake, new keypair's first messages
    old = seal(t.to, [_ip(300), _ip(301)], 130.0)
    t.sender.initiate(t.to, 130.0)
    (init,) = [d for d, _a in t.sender.datagrams_to_send()]
    t.feed([*old[:1], init, *old[1:]], 130.0, addr=ROAMED)
    (resp,) = [d for d, _a in t.one.datagrams_to_send()]
    t.batch.datagrams_to_send()
    t.check_same()
    t.sender.receive_datagram(resp, ("192.0.2.2", 1), 130.0)
    t.sender.datagrams_to_send()
    new = seal(t.to, [_ip(400 + i) for i in range(6)], 131.0)
    t.feed([*seal(t.to, [], 131.0), *new[:3], *old[1:], *new[3:]], 131.0, addr=ROAMED)
    t.check_same()
    # late in the session, then every keypair expired
    late = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT
    t.feed(seal(t.to, [_ip(500), _ip(501)], late), late, addr=ROAMED)
    t.check_same()
    t.feed(seal(t.to, [_ip(600)], late), REJECT_AFTER_TIME + 131.0, addr=ROAMED)
    t.check_same()
    assert t.batch.drops["expired"] == 1 and t.batch.drops["replay"] == 2
    assert t.batch.drops["bad_tag"] == 1 and t.batch.drops["bad_inner"] == 1
    assert len(t.got_one) > 20


def test_seal_into_equals_encrypt_batch() -> None:
    """seal_into writes the messages encrypt_batch returns, back to back, with the same
    counters and timers, and stages packets the same way when there is no session."""
    one, into = Twins(), Twins()
    for t in (one, into):
        t.handshake(0.0)
    buf = bytearray(10)  # too short: grown
    assert into.sender.seal_into(into.to, [b"\x45"], 0.5, bytearray()) != []
    one.sender.encrypt_batch(one.to, [b"\x45"], 0.5)
    sizes_seen = set()
    for now, packets in (
        (1.0, [_ip(i, size) for i, size in enumerate((20, 21, 36, 60, 1419, 1420, 1421, 2000))]),
        (2.0, [b""]),  # a keepalive
        (3.0, [_ip(i) for i in range(64)]),
    ):
        want = one.sender.encrypt_batch(one.to, packets, now)
        sizes = into.sender.seal_into(into.to, packets, now, buf)
        assert sizes == [len(m) for m in want]
        assert bytes(buf[: sum(sizes)]) == b"".join(want)
        sizes_seen.update(sizes)
        for field in ("tx_bytes", "tx_packets", "keepalive_at", "new_handshake_at"):
            assert getattr(into.to, field) == getattr(one.to, field), field
        assert into.to.current.send_counter == one.to.current.send_counter
    assert len(sizes_seen) > 5
    # no session: staged and an initiation queued (past REKEY_TIMEOUT), nothing written
    for t in (one, into):
        t.to.current = None
        t.sender.datagrams_to_send()
    assert into.sender.seal_into(into.to, [_ip(1)], 9.0, buf) == []
    assert one.sender.encrypt_batch(one.to, [_ip(1)], 9.0) == []
    assert list(into.to.staged) == list(one.to.staged) == [_ip(1)]
    assert len(into.sender.datagrams_to_send()) == len(one.sender.datagrams_to_send()) == 1
