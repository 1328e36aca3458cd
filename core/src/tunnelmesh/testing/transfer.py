"""A bounded TCP transfer for the demo and the lab tests (``python -m tunnelmesh.testing.transfer``).

::

    python -m tunnelmesh.testing.transfer sink HOST PORT          # one connection, prints a summary
    python -m tunnelmesh.testing.transfer send HOST PORT --seconds 1.5   # or --bytes N
    python -m tunnelmesh.testing.transfer send HOST PORT --bytes N --rate 1000000  # paced (B/s)

The sink prints ``ready`` once listening, then, after the sender closes,
``received <bytes> sha256 <hex> seconds <s> mbps <Mbit/s>``; the sender prints
``sent <bytes> sha256 <hex>``. The data is a deterministic pseudo-random stream, so both ends
can be compared byte for byte. Both ends stop on their own (``--timeout``).
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
import time

CHUNK = 64 * 1024


_PATTERN = hashlib.shake_128(b"tunnelmesh transfer").digest(CHUNK + 4096)


def _block(i: int) -> bytes:
    off = (i * 61) % 4096  # every block differs from its neighbours: reordering shows
    return _PATTERN[off : off + CHUNK]


def sink(host: str, port: int, timeout: float) -> int:
    srv = socket.create_server((host, port))
    srv.settimeout(timeout)
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(timeout)
    h = hashlib.sha256()
    total = 0
    start = None
    with conn:
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            if start is None:
                start = time.monotonic()
            total += len(data)
            h.update(data)
    elapsed = time.monotonic() - (start or time.monotonic())
    mbps = total * 8 / elapsed / 1e6 if elapsed > 0 else 0.0
    print(
        f"received {total} sha256 {h.hexdigest()} seconds {elapsed:.3f} mbps {mbps:.1f}",
        flush=True,
    )
    return 0


def send(
    host: str, port: int, seconds: float, nbytes: int, timeout: float, rate: float = 0.0
) -> int:
    sock = socket.create_connection((host, port), timeout=timeout)
    h = hashlib.sha256()
    total = 0
    started = time.monotonic()
    deadline = started + seconds if seconds else None
    size = CHUNK if not rate else max(1024, min(CHUNK, int(rate / 20)))
    i = 0
    print("connected", flush=True)
    with sock:
        while True:
            if nbytes and total >= nbytes:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if rate:
                ahead = total / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # pacing: at most `rate` bytes per second
            block = _block(i)[:size]
            i += 1
            if nbytes:
                block = block[: nbytes - total]
            sock.sendall(block)
            h.update(block)
            total += len(block)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # wait for the sink to close: everything was received
    print(f"sent {total} sha256 {h.hexdigest()}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tunnelmesh.testing.transfer")
    p.add_argument("mode", choices=["sink", "send"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--bytes", type=int, default=0, dest="nbytes")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--rate", type=float, default=0.0, help="bytes per second (0: unpaced)")
    a = p.parse_args(argv)
    if a.mode == "sink":
        return sink(a.host, a.port, a.timeout)
    if not a.seconds and not a.nbytes:
        p.error("send needs --seconds or --bytes")
    return send(a.host, a.port, a.seconds, a.nbytes, a.timeout, a.rate)


if __name__ == "__main__":
    sys.exit(main())
