"""CPU per packet of the SSH and relay transports themselves, both ends in one process.

    uv run python tunnelmesh_relay/bench/bench_transport_cpu.py

No root, no TUN device, no lab: an SSH pair over 127.0.0.1 (asyncssh, host keys pinned as in a
mesh) and a relay pair through a coordinator with the relay route on 127.0.0.1 (TLS, its hub
forwarding between the two WebSockets, no rate limit). ``BENCH_PACKETS`` packets of 1,420 bytes
go through ``Link.send_batch`` in batches of ``BENCH_BATCH`` (64: what the forwarder hands an
SSH link at full speed in the lab, about 65 packets a channel write) and come out of the other
link's receiver; at most ``BENCH_INFLIGHT`` packets are on the way (``BENCH_SIZE`` other than
1,420: packets of that size, up to 65,535 for the SSH link, to see the per-byte share). What the forwarder and the
TUN device cost is not in it (``core/bench``).

Figures: process CPU time per packet (``time.process_time``: send, carrier and receive, and for
the relay the hub too; min of ``BENCH_ROUNDS``, 3), beside the anchors, one AEAD call on a
1,420-byte packet: AES-128-GCM (the SSH cipher asyncssh negotiates first) and
ChaCha20-Poly1305 (WireGuard's, twice per relayed packet). For a load-independent count run it
under ``valgrind --tool=callgrind`` twice with ``BENCH_ROUNDS=1 BENCH_ANCHOR=0 BENCH_ONLY=ssh``
(or ``relay``) and ``BENCH_PACKETS`` of 3000 and 13000, and divide the difference of the totals
by 10000.
"""

from __future__ import annotations

import asyncio
import os
import time
import timeit
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from tunnelmesh.abc import Link
from tunnelmesh.identity import Identity

PACKETS = int(os.environ.get("BENCH_PACKETS", "100000"))
BATCH = int(os.environ.get("BENCH_BATCH", "64"))
INFLIGHT = int(os.environ.get("BENCH_INFLIGHT", "2048"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
ANCHOR = os.environ.get("BENCH_ANCHOR", "1") != "0"
ONLY = set(os.environ.get("BENCH_ONLY", "ssh,relay").split(","))
WARM = 2000
SIZE = int(os.environ.get("BENCH_SIZE", "1420"))


def tcp_segment(size: int) -> bytes:
    """An IPv4 packet of ``size`` bytes (what a link carries; nothing checks it here)."""
    return bytes((0x45, 0)) + size.to_bytes(2, "big") + bytes(size - 4)


async def push(tx: Link, rx: Link, count: int) -> float:
    """Send ``count`` packets through ``tx`` until ``rx`` received them; CPU seconds."""
    packet = tcp_segment(SIZE)
    got = 0
    arrived = asyncio.Event()

    def deliver(_link: Link, packets: list[bytes]) -> None:
        nonlocal got
        got += len(packets)
        arrived.set()

    rx.set_receiver(deliver)
    start = time.process_time()
    sent = 0
    while sent < count:
        while sent - got > INFLIGHT:
            arrived.clear()
            await arrived.wait()
        tx.send_batch([packet] * BATCH)
        sent += BATCH
        await asyncio.sleep(0)
    while got < sent:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 30)
    return time.process_time() - start


async def ssh_pair() -> tuple[Link, Link, list[Any]]:
    from tunnelmesh_ssh.transport import SshTransport

    a, b = Identity.generate(), Identity.generate()
    server = SshTransport(b, "b", listen="127.0.0.1:0")
    incoming: list[Link] = []
    await server.listen(incoming.append)
    server.update_peer("a", public_key=a.public_raw)
    client = SshTransport(a, "a", listen="127.0.0.1:0")
    endpoint = f"127.0.0.1:{server.local_address[1]}"
    link = await client.dial("b", [endpoint], public_key=b.public_raw)
    while not incoming:
        await asyncio.sleep(0.01)
    return link, incoming[0], [client, server]


async def relay_pair() -> tuple[Link, Link, list[Any]]:
    from tunnelmesh_relay.server import RelayConfig
    from tunnelmesh_relay.testing import RelayMesh

    mesh = RelayMesh(None, ["a", "b"], relay=RelayConfig(rate_bytes_per_second=0, queue=1024))
    await mesh.__aenter__()
    ta, tb = mesh.transport("a"), mesh.transport("b")
    incoming: list[Link] = []
    await ta.listen(lambda _link: None)
    await tb.listen(incoming.append)
    ta.update_peer("b", public_key=mesh.identities["b"].public_raw)
    tb.update_peer("a", public_key=mesh.identities["a"].public_raw)
    await ta.wait_connected(10)
    await tb.wait_connected(10)
    link = await ta.dial("b", ["relay"])
    link.send_batch([tcp_segment(100)])  # b makes its link on the first data
    while not incoming:
        await asyncio.sleep(0.01)

    class Mesh:
        async def aclose(self) -> None:
            await mesh.__aexit__(None, None, None)

    return link, incoming[0], [ta, tb, Mesh()]


async def main() -> None:
    print(
        f"{PACKETS} packets of {SIZE} bytes, batches of {BATCH}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        flush=True,
    )
    if ANCHOR:
        nonce, data = bytes(12), os.urandom(SIZE)
        aes, chacha = AESGCM(os.urandom(16)), ChaCha20Poly1305(os.urandom(32))
        for name, seal in (
            ("AES-128-GCM", lambda: aes.encrypt(nonce, data, None)),
            ("ChaCha20-Poly1305", lambda: chacha.encrypt(nonce, data, None)),
        ):
            best = min(timeit.repeat(seal, number=20000))
            print(f"  anchor, one {name} seal of {SIZE} bytes: {best / 20000 * 1e6:.2f} us")
    for name, make in (("ssh", ssh_pair), ("relay", relay_pair)):
        if name not in ONLY:
            continue
        tx, rx, closers = await make()
        try:
            await push(tx, rx, WARM)
            best = min([await push(tx, rx, PACKETS) for _ in range(ROUNDS)])
        finally:
            for c in closers:
                await c.aclose()
        print(f"  {name}: {best / PACKETS * 1e6:.2f} us CPU per packet (both ends)", flush=True)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
