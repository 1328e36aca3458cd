"""The send-side per-packet budget, and the whole path through two UDP sockets on loopback.

Run: ``uv run python core/bench/bench_outbound.py`` (or ``nox -s bench -- outbound``). Not part
of the test run; no root, no TUN device: a ``socketpair`` of datagram sockets stands in for the
TUN device (one ``read`` per packet, as a TUN device without TSO gives them), and the WireGuard
datagrams go to a second :class:`~tunnelmesh.aio.wgsocket.WireGuardSocket` on 127.0.0.1 (UDP
GSO and GRO when the kernel has them), whose forwarder writes to ``/dev/null``.

Stages, for batches of 64 packets of 1,408 bytes (one iperf3 TCP flow as the tunnel carries it):

* the forwarder reading the TUN stand-in, routing, and handing each batch to a link that drops it;
* the engine sealing the batch (``encrypt_batch``, and ``seal_into`` one buffer as the UDP
  socket does);
* the socket sending sealed batches (GSO ``sendmsg`` of slices of that buffer; kernel time
  included);
* the whole send side: TUN read -> route -> seal -> send;
* the whole receive side of the other socket: ``recvmsg`` (GRO) -> open -> forwarder -> write.

Figures are process CPU time (``time.process_time_ns``: the kernel's share of the syscalls is
in them, other processes are not), the minimum of several rounds, in ns per packet, beside the
anchor: ChaCha20-Poly1305 sealing one packet. ``BENCH_ROUNDS`` / ``BENCH_BATCHES`` in the
environment change the rounds (7) and batches per round (100), e.g. for a callgrind run.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from tunnelmesh.abc import Link
from tunnelmesh.aio.wgsocket import WireGuardSocket
from tunnelmesh.mesh.forwarder import Forwarder
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.proto import WireGuard

BATCH = 64
BATCHES = int(os.environ.get("BENCH_BATCHES", "100"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
TOTAL = BATCH * BATCHES
PAYLOAD_BYTES = 1368


def segment(i: int) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40 + PAYLOAD_BYTES, i & 0xFFFF, 0x4000, 64, 6, 0,
        bytes([10, 42, 0, 1]), bytes([10, 42, 0, 2]),
    )  # fmt: skip
    tcp = struct.pack("!HHIIBBHHH", 5000, 5201, 1000 + i * PAYLOAD_BYTES, 1, 0x50, 0x10, 512, 0, 0)
    return ip + tcp + bytes(PAYLOAD_BYTES)


class Sink(Link):
    """A link that counts what it is given (the forwarder's stage alone)."""

    peer, mtu = "b", 1420

    def __init__(self) -> None:
        self.count = 0

    def send_batch(self, datagrams: object) -> None:
        self.count += len(datagrams)  # type: ignore[arg-type]

    async def recv_batch(self) -> list[bytes]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def cpu_ns(work: Callable[[], object], count: int) -> float:
    start = time.process_time_ns()
    work()
    return (time.process_time_ns() - start) / count


class Path:
    """A -> B: a TUN stand-in, A's forwarder and socket, loopback UDP, B's socket and forwarder."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tun, self.tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.tun, self.tun_peer):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.tun.setblocking(False)
        ua, ub = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        ua.bind(("127.0.0.1", 0))
        ub.bind(("127.0.0.1", 0))
        a = WireGuard(bytes(range(32)), rng=os.urandom)
        b = WireGuard(bytes(range(1, 33)), rng=os.urandom)
        self.to_b = a.add_peer(b.public_key, name="b", endpoint=ub.getsockname())
        b.add_peer(a.public_key, name="a")
        self.sa = WireGuardSocket(a, ua, watch_addresses=False)
        self.sb = WireGuardSocket(b, ub, watch_addresses=False)
        self.sa.session.start(loop)
        self.sb.session.start(loop)
        self.a, self.b = a, b
        routes = RoutingTable()
        routes.set_peer("b", mesh_ips=["10.42.0.2"])
        self.fa = Forwarder(self.tun.fileno(), routes, batch=BATCH)
        self.sink = Sink()
        routes.set_link("b", self.sink)
        self.devnull = os.open(os.devnull, os.O_WRONLY)
        broutes = RoutingTable()
        broutes.set_peer("a", mesh_ips=["10.42.0.1"])
        self.fb = Forwarder(self.devnull, broutes, vnet_hdr=True)
        self.fb.probe_sink = lambda _link, _probes: None
        self.packets = [segment(i) for i in range(BATCH)]
        # the handshake, through the sockets
        self.sa.session.initiate(self.to_b)
        for _ in range(3):
            self.sb._on_readable()
            self.sa._on_readable()
        assert a.has_session(self.to_b, self.sa.now()), "no session"
        self.link = self.sa.link_for(self.to_b)
        for link in self.sb.links.values():
            self.fb.attach(link)

    def fill_tun(self) -> None:
        for p in self.packets:
            self.tun_peer.send(p)

    def close(self) -> None:
        self.sa.close()
        self.sb.close()
        self.tun.close()
        self.tun_peer.close()
        os.close(self.devnull)


def run(path: Path, record: Callable[[str, float], None]) -> None:
    packets = path.packets
    fa, sa, sb = path.fa, path.sa, path.sb
    a, to_b = path.a, path.to_b
    routes = fa.routes

    # the forwarder alone: TUN reads, routing, one send_batch per batch (to a sink)
    routes.set_link("b", path.sink)
    elapsed = 0
    for _ in range(BATCHES):
        path.fill_tun()
        start = time.process_time_ns()
        fa._on_tun_readable()
        elapsed += time.process_time_ns() - start
    record("forwarder: TUN read + route (one read per packet)", elapsed / TOTAL)

    def seal() -> None:
        for _ in range(BATCHES):
            a.encrypt_batch(to_b, packets, 1.0)

    record("engine: encrypt_batch (a bytes object per message: the relay)", cpu_ns(seal, TOTAL))
    buf = bytearray()

    def seal_into() -> None:
        for _ in range(BATCHES):
            a.seal_into(to_b, packets, 1.0, buf)

    record("engine: seal_into one buffer (the UDP socket)", cpu_ns(seal_into, TOTAL))

    sizes = a.seal_into(to_b, packets, sa.now(), buf)
    endpoint = to_b.endpoint

    elapsed = 0
    for _ in range(BATCHES):
        start = time.process_time_ns()
        sa._send_sealed(buf, sizes, endpoint)
        elapsed += time.process_time_ns() - start
        sb._on_readable()  # drained (not counted here), so nothing is dropped
    record("socket: GSO sendmsg of sealed batches", elapsed / TOTAL)

    # the whole send side, then the whole receive side of the other node
    routes.set_link("b", path.link)
    send_ns = recv_ns = 0
    rx0 = path.fb.stats["rx_packets"]
    for _ in range(BATCHES):
        path.fill_tun()
        start = time.process_time_ns()
        fa._on_tun_readable()
        mid = time.process_time_ns()
        sb._on_readable()
        recv_ns += time.process_time_ns() - mid
        send_ns += mid - start
    record("send side: TUN read -> route -> seal -> GSO sendmsg", send_ns / TOTAL)
    record("receive side: recvmsg (GRO) -> open -> forwarder -> TUN write", recv_ns / TOTAL)
    got = path.fb.stats["rx_packets"] - rx0
    assert got == TOTAL, (got, dict(sb.drops), dict(path.fb.stats))


def anchor(record: Callable[[str, float], None]) -> None:
    aead = ChaCha20Poly1305(bytes(32))
    packet = segment(0)

    def seal_one() -> None:
        for _ in range(TOTAL):
            aead.encrypt(bytes(12), packet, None)

    record("  anchor: ChaCha20-Poly1305 seal of one 1,408-byte packet", cpu_ns(seal_one, TOTAL))


def main() -> None:
    results: dict[str, list[float]] = {}

    def record(name: str, ns: float) -> None:
        results.setdefault(name, []).append(ns)

    loop = asyncio.new_event_loop()
    path = Path(loop)
    try:
        for _ in range(ROUNDS):
            run(path, record)
            anchor(record)
        gso, gro = path.sa.gso, path.sb.gro
    finally:
        path.close()
        loop.close()
    load = os.getloadavg()
    print(
        f"# {os.cpu_count()} CPUs, load average {load[0]:.2f}; UDP GSO {gso}, GRO {gro}; "
        f"CPU ns per packet, min of {ROUNDS}"
    )
    for name, values in results.items():
        print(f"{name:70} {min(values):7.0f}")


if __name__ == "__main__":
    main()
