"""The inbound per-packet budget: CPU time of each stage from datagram to TUN write.

Run: ``uv run python core/bench/bench_inbound.py`` (or ``nox -s bench -- inbound``). Not part
of the test run, no network: 64-packet batches of 1,408-byte TCP segments (one iperf3 flow as
the tunnel carries it), opened by the WireGuard engine one datagram per call and in one
``receive_batch`` call, then handed to the forwarder (anti-spoofing, probe separation, TCP
coalescing, writes to ``/dev/null`` in place of the TUN device). Figures are process CPU time
(``time.process_time_ns``, so a busy machine inflates them less than wall time), the minimum
of several rounds, in ns per packet, beside the anchor: ChaCha20-Poly1305 alone on one packet.
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from tunnelmesh.abc import Link
from tunnelmesh.mesh.forwarder import Forwarder
from tunnelmesh.mesh.offload import coalesce_ipv4_tcp
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.proto import Peer, WireGuard

BATCH, BATCHES, ROUNDS = 64, 100, 7
TOTAL = BATCH * BATCHES
PAYLOAD_BYTES = 1368
SENDER = ("10.0.0.1", 51820)


def segment(i: int) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40 + PAYLOAD_BYTES, i & 0xFFFF, 0x4000, 64, 6, 0,
        bytes([10, 42, 0, 2]), bytes([10, 42, 0, 1]),
    )  # fmt: skip
    tcp = struct.pack("!HHIIBBHHH", 5201, 5000, 1000 + i * PAYLOAD_BYTES, 1, 0x50, 0x10, 512, 0, 0)
    return ip + tcp + bytes(PAYLOAD_BYTES)


def engines() -> tuple[WireGuard, WireGuard, Peer]:
    rng = random.Random(1)
    a = WireGuard(rng.randbytes(32), rng=rng.randbytes)
    b = WireGuard(rng.randbytes(32), rng=rng.randbytes)
    to_b = a.add_peer(b.public_key, name="b", endpoint=("10.0.0.2", 51820))
    b.add_peer(a.public_key, name="a")
    a.initiate(to_b, 0.0)
    for _ in range(3):
        for data, _addr in a.datagrams_to_send():
            b.receive_datagram(data, SENDER, 0.0)
        for data, _addr in b.datagrams_to_send():
            a.receive_datagram(data, ("10.0.0.2", 51820), 0.0)
    return a, b, to_b


def cpu_ns(work: Callable[[], object], count: int) -> float:
    start = time.process_time_ns()
    work()
    return (time.process_time_ns() - start) / count


class FromA(Link):
    peer, mtu = "a", 1420

    def send_batch(self, datagrams: object) -> None:
        raise NotImplementedError

    async def recv_batch(self) -> list[bytes]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def open_all(mode: str, record: Callable[[str, float], None]) -> list[list[bytes]]:
    """Open BATCHES sealed batches with ``mode``; the opened packets, per batch."""
    a, b, to_b = engines()
    batches = [a.encrypt_batch(to_b, [segment(i) for i in range(BATCH)], 1.0)]
    batches += [a.encrypt_batch(to_b, [segment(i) for i in range(BATCH)], 1.0)
                for _ in range(BATCHES - 1)]  # fmt: skip
    opened: list[list[bytes]] = []

    def per_datagram() -> None:
        for msgs in batches:
            per: dict[Peer, list[bytes]] = {}
            for m in msgs:
                r = b.receive_datagram(m, SENDER, 1.0)
                if r is not None:
                    per.setdefault(r[0], []).append(r[1])
            opened.extend(per.values())

    def batched() -> None:
        for msgs in batches:
            per: dict[Peer, list[bytes]] = {}
            b.receive_batch(msgs, SENDER, 1.0, per)
            opened.extend(per.values())

    record(f"engine: {mode}", cpu_ns(batched if "receive_batch" in mode else per_datagram, TOTAL))
    assert not b.drops and sum(map(len, opened)) == TOTAL, dict(b.drops)
    return opened


def forward_all(opened: list[list[bytes]], record: Callable[[str, float], None]) -> None:
    routes = RoutingTable()
    routes.set_peer("a", mesh_ips=["10.42.0.2"])
    devnull = os.open(os.devnull, os.O_WRONLY)
    link = FromA()
    try:
        for label, vnet in (
            ("forwarder: checks + one TUN write per packet (no vnet_hdr)", False),
            ("forwarder: checks + TCP coalescing + writes (vnet_hdr, the default)", True),
        ):
            fw = Forwarder(devnull, routes, vnet_hdr=vnet)
            fw.probe_sink = lambda _link, _probes: None

            def deliver(fw: Forwarder = fw) -> None:
                for c in opened:
                    fw.deliver(link, c)

            record(label, cpu_ns(deliver, TOTAL))
            assert fw.stats["rx_packets"] == TOTAL, dict(fw.stats)

        def coalesce() -> None:
            for c in opened:
                coalesce_ipv4_tcp(c)

        def write() -> None:
            for c in opened:
                for p in c:
                    os.write(devnull, p)

        record("  of which coalesce_ipv4_tcp", cpu_ns(coalesce, TOTAL))
        record("  of which os.write per packet", cpu_ns(write, TOTAL))
    finally:
        os.close(devnull)


def anchor(record: Callable[[str, float], None]) -> None:
    aead = ChaCha20Poly1305(bytes(32))
    sealed = aead.encrypt(bytes(12), segment(0), None)

    def open_one() -> None:
        for _ in range(TOTAL):
            aead.decrypt(bytes(12), sealed, None)

    record("  anchor: ChaCha20-Poly1305 open of one 1,408-byte packet", cpu_ns(open_one, TOTAL))


def main() -> None:
    results: dict[str, list[float]] = {}

    def record(name: str, ns: float) -> None:
        results.setdefault(name, []).append(ns)

    for _ in range(ROUNDS):
        open_all("one receive_datagram call per datagram", record)
        opened = open_all("one receive_batch call per batch", record)
        anchor(record)
        forward_all(opened, record)
    load = os.getloadavg()
    print(
        f"# {os.cpu_count()} CPUs, load average {load[0]:.2f}; CPU ns per packet, min of {ROUNDS}"
    )
    for name, values in results.items():
        print(f"{name:70} {min(values):7.0f}")


if __name__ == "__main__":
    main()
