"""The asyncio driver of the WireGuard engine over loopback, against a bare engine on a socket:
keepalives on an address change, a rekey initiation sent ahead of the burst it rides on, and a
lone datagram read without a second read that ends in EAGAIN."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import pytest
import uvloop
from tunnelmesh.aio.wgsocket import WireGuardSocket
from tunnelmesh.proto import WireGuard

WALL = 1_700_000_000.0


def _packet(i: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 24, 0, 0, 64, 17, 0, b"\n*\0\1", b"\n*\0\2")
    return header + i.to_bytes(4, "big")


def _udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


async def _poll(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def _rekey_initiation_leaves_before_the_burst() -> None:
    rng = random.Random(7)
    a = WireGuard(rng.randbytes(32), rng=rng.randbytes)
    b = WireGuard(rng.randbytes(32), rng=rng.randbytes, wall_offset=WALL)
    b_sock = _udp()
    b_sock.settimeout(5)
    driver = WireGuardSocket(a, _udp(), gso=True, gro=False, watch_addresses=False)
    driver.start()
    try:
        a_addr = driver.sock.getsockname()
        peer = a.add_peer(b.public_key, name="b", endpoint=b_sock.getsockname())
        b.add_peer(a.public_key, name="a")
        loop = asyncio.get_running_loop()
        # the first handshake, answered by b by hand
        link = driver.link_for(peer)
        link.send_batch([_packet(0)])  # staged; an initiation goes out
        init, _ = await loop.run_in_executor(None, b_sock.recvfrom, 2048)
        assert init[0] == 1
        b.receive_datagram(init, a_addr, 0.0)
        for data, _addr in b.datagrams_to_send():
            b_sock.sendto(data, a_addr)
        await _poll(lambda: a.has_session(peer, driver.now()))
        while True:  # the keepalive and the staged packet
            data, _ = await loop.run_in_executor(None, b_sock.recvfrom, 2048)
            if b.receive_datagram(data, a_addr, 0.0) is not None:
                break
        # after a local address change: one keepalive per peer with a session, none for
        # a peer without one (no handshake is started for it)
        a.add_peer(rng.randbytes(32), name="quiet", endpoint=("127.0.0.1", 9))
        assert driver.send_keepalives() == 1
        keepalive, _ = await loop.run_in_executor(None, b_sock.recvfrom, 2048)
        assert keepalive[0] == 4 and len(keepalive) == 32
        assert b.receive_datagram(keepalive, a_addr, 0.0) is None and not b.drops
        # the session is due for a rekey: the next batch carries the initiation
        a.rekey_after_time = 0.0
        peer.last_sent_handshake = None
        link.send_batch([_packet(i) for i in range(1, 101)])
        kinds = [b_sock.recvfrom(2048)[0][0] for _ in range(101)]
        assert kinds[0] == 1, kinds  # the handshake initiation first ...
        assert kinds[1:] == [4] * 100  # ... then the burst of transport messages
    finally:
        driver.close()
        b_sock.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_rekey_initiation_leaves_before_the_burst(loop: str) -> None:
    if loop == "uvloop":
        uvloop.run(_rekey_initiation_leaves_before_the_burst())
    else:
        asyncio.run(_rekey_initiation_leaves_before_the_burst())


class _CountingSocket:
    """A UDP socket whose ``recvmsg_into`` calls are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0

    def recvmsg_into(self, *args: object) -> object:
        self.reads += 1
        return self.sock.recvmsg_into(*args)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def test_a_lone_datagram_is_read_once_and_a_burst_until_the_socket_is_empty() -> None:
    """A ping must not pay for a read that ends in EAGAIN; a burst is read whole."""
    loop = asyncio.new_event_loop()
    sock, sender = _udp(), _udp()
    driver = WireGuardSocket(WireGuard(bytes(32)), sock, gro=False, watch_addresses=False)
    counting = _CountingSocket(sock)
    driver.sock = counting  # type: ignore[assignment]
    try:
        driver.session.start(loop)
        junk = bytes([9]) + bytes(40)  # not a WireGuard message: dropped and counted
        sender.sendto(junk, sock.getsockname())  # on loopback, queued when sendto returns
        driver._on_readable()
        assert counting.reads == 1 and driver.drops["bad_type"] == 1
        for _ in range(3):
            sender.sendto(junk, sock.getsockname())
        driver._on_readable()
        assert driver.drops["bad_type"] == 4
        assert counting.reads == 1 + 4  # three datagrams, then the read that finds none
    finally:
        driver.close()
        sender.close()
        loop.close()
