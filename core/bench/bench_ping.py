"""One packet alone (a ping), the whole round trip through two nodes' data paths, in one process.

Run: ``uv run python core/bench/bench_ping.py`` (or ``nox -s bench -- ping``). Not part of the
test run; no root, no TUN device: each node's TUN device is a ``socketpair`` of datagram
sockets (one packet per ``read``/``write``, a 10-byte virtio_net_hdr in front as the default
configuration's TUN device has it), the WireGuard datagrams go over UDP on 127.0.0.1.

One round: node A's TUN device has an ICMP echo request; A's forwarder reads it and seals it
(``_on_tun_readable``), B's socket opens it and writes it to B's TUN device (``_on_readable``),
the echo reply goes back the same way, B -> A. Each of the four callbacks is what the event
loop calls when the descriptor becomes readable, with its reads (one, for a lone packet); the
loop's own wake-up (``epoll_wait``) is not in the figure. What a ping costs besides the cipher is
Python per wake-up, so this counts exactly that.

Figures: process CPU time per round trip (``time.process_time_ns``, kernel share of the
syscalls included; min of ``BENCH_ROUNDS``, 7), hot (round trips back to back) and cold (each
after 64 MiB copied through the caches, ``BENCH_COLD_PINGS`` of them, 100; 0 skips it): the
lab benchmark's pings come 50 ms apart and start cold, which costs several times the hot
figure. Beside them the ChaCha20-Poly1305 anchor (four seal/open calls of the packet).

For a load-independent count run it under ``valgrind --tool=callgrind`` twice with
``BENCH_ROUNDS=1 BENCH_ANCHOR=0 BENCH_COLD_PINGS=0`` and ``BENCH_PINGS``
of 200 and 1200, and divide the difference of the totals by 1000.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from tunnelmesh.aio.wgsocket import WireGuardSocket
from tunnelmesh.mesh.forwarder import Forwarder
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.proto import WireGuard

PINGS = int(os.environ.get("BENCH_PINGS", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
ANCHOR = os.environ.get("BENCH_ANCHOR", "1") != "0"
COLD_PINGS = int(os.environ.get("BENCH_COLD_PINGS", "100"))
VNET = bytes(10)


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def icmp_echo(src: bytes, dst: bytes, kind: int, seq: int) -> bytes:
    """An IPv4 ICMP echo request (``kind`` 8) or reply (0) with ping's 56 bytes of payload."""
    body = struct.pack("!BBHHH", kind, 0, 0, 7, seq) + bytes(56)
    body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), seq, 0x4000, 64, 1, 0, src, dst)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + body


class Node:
    """A TUN stand-in, a forwarder (vnet_hdr, as with TUN coalescing) and a UDP WireGuard socket."""

    def __init__(self, engine: WireGuard, mesh_ip: str, peer_name: str, peer_ip: str) -> None:
        self.tun, self.app = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tun.setblocking(False)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.socket = WireGuardSocket(engine, sock, watch_addresses=False)
        self.routes = RoutingTable()
        self.routes.set_peer(peer_name, mesh_ips=[peer_ip])
        self.forwarder = Forwarder(self.tun.fileno(), self.routes, vnet_hdr=True)
        self.address = socket.inet_aton(mesh_ip)

    def close(self) -> None:
        self.socket.close()
        self.tun.close()
        self.app.close()


def pair(loop: asyncio.AbstractEventLoop) -> tuple[Node, Node]:
    ea = WireGuard(bytes(range(32)), rng=os.urandom)
    eb = WireGuard(bytes(range(1, 33)), rng=os.urandom)
    a = Node(ea, "10.42.0.1", "b", "10.42.0.2")
    b = Node(eb, "10.42.0.2", "a", "10.42.0.1")
    to_b = ea.add_peer(eb.public_key, name="b", endpoint=b.socket.sock.getsockname())
    eb.add_peer(ea.public_key, name="a")
    a.socket.session.start(loop)
    b.socket.session.start(loop)
    a.socket.session.initiate(to_b)
    for _ in range(3):  # the handshake, through the sockets
        b.socket._on_readable()
        a.socket._on_readable()
    assert ea.has_session(to_b, a.socket.now()), "no session"
    a.forwarder.attach(a.socket.link_for(to_b))
    for link in b.socket.links.values():
        b.forwarder.attach(link)
    return a, b


def round_trip(a: Node, b: Node, request: bytes, reply: bytes) -> None:
    """One ping; the TUN stand-ins' own ``send``/``recv`` (four syscalls) are in the figure."""
    a.app.send(request)
    a.forwarder._on_tun_readable()
    b.socket._on_readable()
    if b.app.recv(2048)[10 + 20] != 8:
        raise AssertionError("no echo request on B's TUN device")
    b.app.send(reply)
    b.forwarder._on_tun_readable()
    a.socket._on_readable()
    if a.app.recv(2048)[10 + 20] != 0:
        raise AssertionError("no echo reply on A's TUN device")


def cold_round_trips(a: Node, b: Node, request: bytes, reply: bytes) -> float:
    """CPU ns of a round trip that starts cold: 64 MiB copied before each one (not counted)
    evicts the caches, as 50 ms of other work does between the lab benchmark's pings."""
    src, dst = bytes(64 << 20), bytearray(64 << 20)
    total = 0
    for _ in range(COLD_PINGS):
        dst[:] = src
        start = time.process_time_ns()
        round_trip(a, b, request, reply)
        total += time.process_time_ns() - start
    return total / COLD_PINGS


def main() -> None:
    loop = asyncio.new_event_loop()
    a, b = pair(loop)
    aead = ChaCha20Poly1305(bytes(32))
    packet = icmp_echo(a.address, b.address, 8, 1)
    request, reply = VNET + packet, VNET + icmp_echo(b.address, a.address, 0, 1)
    trips: list[float] = []
    colds: list[float] = []
    anchors: list[float] = []
    try:
        for _ in range(ROUNDS):
            start = time.process_time_ns()
            for _ in range(PINGS):
                round_trip(a, b, request, reply)
            trips.append((time.process_time_ns() - start) / PINGS)
            if COLD_PINGS:
                colds.append(cold_round_trips(a, b, request, reply))
            if not ANCHOR:
                continue
            start = time.process_time_ns()
            for _ in range(PINGS):
                for _ in range(2):
                    sealed = aead.encrypt(bytes(12), packet, None)
                    aead.decrypt(bytes(12), sealed, None)
            anchors.append((time.process_time_ns() - start) / PINGS)
    finally:
        a.close()
        b.close()
        loop.close()
    load = os.getloadavg()
    print(f"# {os.cpu_count()} CPUs, load average {load[0]:.2f}; CPU ns, min of {ROUNDS}")
    print(
        f"{'one ping round trip: 4 wake-ups (TUN, UDP, TUN, UDP), both nodes':70} {min(trips):7.0f}"
    )
    if colds:
        cold_name = "  the same, each after 64 MiB streamed through the caches (cold)"
        print(f"{cold_name:70} {min(colds):7.0f}")
    if anchors:
        anchor_name = "  anchor: ChaCha20-Poly1305, 2 seals + 2 opens of the 84-byte packet"
        print(f"{anchor_name:70} {min(anchors):7.0f}")


if __name__ == "__main__":
    main()
