"""``tunnelmesh benchmark``: throughput, round trip and loss to a peer through the mesh.

The peer runs a benchmark listener on its mesh IP (``benchmark: {enabled: true}``, off by
default; port 9998), TCP and UDP on the same port:

TCP
    The client sends one line of JSON, ``{"op": "upload"|"download", "size": N}``. Upload:
    the client sends N bytes, the listener answers ``{"received": N, "seconds": S}`` (its own
    receive time). Download: the listener sends N bytes. One request per connection; sizes up
    to :data:`MAX_SIZE`; at most :data:`MAX_CLIENTS` at once; anything else closes the
    connection and is counted in :attr:`BenchmarkServer.stats`.
UDP
    Echo of probes ``b"TMBP" + seq (4 bytes) + padding`` (64 bytes): the client sends a probe
    every ``interval`` seconds and reads the echoes, which gives the round trip and the loss.
    Anything that is not a probe is dropped and counted (no amplification: an echo is never
    larger than the probe).

The client reports bytes, seconds and Mbit/s per direction, the probes' RTT (min/avg/max) and
loss, as text or JSON (docs/benchmark.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_PORT",
    "BenchmarkServer",
    "ProbeResult",
    "TransferResult",
    "parse_size",
    "probe",
    "transfer",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 9998
MAX_SIZE = 1 << 30
MAX_CLIENTS = 4
CHUNK = 256 * 1024
PROBE_MAGIC = b"TMBP"
PROBE_SIZE = 64
HEADER_LIMIT = 256


def parse_size(text: str) -> int:
    """``10MB`` (10 000 000), ``512KiB``, ``1GB``, ``4096`` -> bytes.

    Raises:
        ValueError: not a size, or over 1 GiB.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*", text, re.I)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 10MB, 512KiB, 4096)")
    unit = (m.group(2) or "b").lower().rstrip("b") or "b"
    scale = {
        "b": 1,
        "k": 10**3,
        "m": 10**6,
        "g": 10**9,
        "ki": 1 << 10,
        "mi": 1 << 20,
        "gi": 1 << 30,
    }
    n = int(float(m.group(1)) * scale[unit])
    if not 0 < n <= MAX_SIZE:
        raise ValueError(f"size {text!r}: 1 byte to 1 GiB")
    return n


# --- the listener ------------------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def __init__(self, server: BenchmarkServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) != PROBE_SIZE or not data.startswith(PROBE_MAGIC):
            self.server.stats["bad_probes"] += 1
            return
        self.server.stats["probes"] += 1
        assert self.transport is not None
        self.transport.sendto(data, addr)


class BenchmarkServer:
    """The benchmark listener (TCP and UDP on ``host:port``)."""

    def __init__(self, host: str, port: int = DEFAULT_PORT) -> None:
        self.host, self.port = host, port
        self.stats = {"uploads": 0, "downloads": 0, "bytes": 0, "bad_requests": 0, "busy": 0}
        self.stats.update(probes=0, bad_probes=0)
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._clients = 0

    async def start(self) -> None:
        """Listen (raises OSError when the port is taken)."""
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._serve, self.host, self.port)
        if self.port == 0:
            self.port = self._tcp.sockets[0].getsockname()[1]
        try:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Echo(self), local_addr=(self.host, self.port)
            )
        except BaseException:
            self._tcp.close()
            raise

    async def aclose(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            self.stats["busy"] += 1
            writer.close()
            return
        self._clients += 1
        try:
            await asyncio.wait_for(self._request(reader, writer), 600)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("benchmark client: %s", exc)
        finally:
            self._clients -= 1
            writer.close()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await asyncio.wait_for(reader.readline(), 10)
        try:
            req = json.loads(line[:HEADER_LIMIT])
            op, size = req["op"], int(req["size"])
            if op not in ("upload", "download") or not 0 < size <= MAX_SIZE:
                raise ValueError(op)
        except (ValueError, KeyError, TypeError):
            self.stats["bad_requests"] += 1
            return
        if op == "upload":
            started = time.monotonic()
            left = size
            while left:
                chunk = await reader.read(min(left, CHUNK))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
            took = time.monotonic() - started
            writer.write(json.dumps({"received": size, "seconds": took}).encode() + b"\n")
            self.stats["uploads"] += 1
        else:
            block = bytes(min(size, CHUNK))
            left = size
            while left:
                writer.write(block[: min(left, CHUNK)])
                left -= min(left, CHUNK)
                await writer.drain()
            self.stats["downloads"] += 1
        self.stats["bytes"] += size
        await writer.drain()


# --- the client --------------------------------------------------------------------------------


@dataclass
class TransferResult:
    direction: str
    bytes: int
    seconds: float

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "seconds": round(self.seconds, 6), "mbps": round(self.mbps, 3)}


@dataclass
class ProbeResult:
    sent: int
    rtts: list[float] = field(default_factory=list)  # seconds, of the echoes received

    @property
    def received(self) -> int:
        return len(self.rtts)

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    def as_dict(self) -> dict[str, Any]:
        ms = [r * 1000 for r in self.rtts]
        rtt = (
            {"min": round(min(ms), 3), "avg": round(sum(ms) / len(ms), 3), "max": round(max(ms), 3)}
            if ms
            else None
        )
        return {
            "sent": self.sent,
            "received": self.received,
            "loss_pct": round(self.loss_pct, 2),
            "rtt_ms": rtt,
        }


Progress = Callable[[int, int], None]


async def transfer(
    host: str,
    port: int,
    direction: str,
    size: int,
    *,
    progress: Progress | None = None,
    timeout: float = 300.0,
) -> TransferResult:
    """Upload or download ``size`` bytes through the mesh; returns the measured time.

    Upload time is the listener's receive time (first to last byte there); download time is
    the client's (first to last byte here).

    Raises:
        OSError: the listener cannot be reached or closed early.
        TimeoutError: it took longer than ``timeout``.
    """
    return await asyncio.wait_for(_transfer(host, port, direction, size, progress), timeout)


async def _transfer(
    host: str, port: int, direction: str, size: int, progress: Progress | None
) -> TransferResult:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(json.dumps({"op": direction, "size": size}).encode() + b"\n")
        done = 0
        if direction == "upload":
            block = bytes(CHUNK)
            while done < size:
                n = min(CHUNK, size - done)
                writer.write(block[:n])
                await writer.drain()
                done += n
                if progress:
                    progress(done, size)
            line = await reader.readline()
            if not line:
                raise ConnectionError("the listener closed the connection")
            answer = json.loads(line)
            return TransferResult("upload", int(answer["received"]), float(answer["seconds"]))
        started = None
        while done < size:
            chunk = await reader.read(CHUNK)
            if not chunk:
                raise ConnectionError(f"the listener stopped after {done} of {size} bytes")
            if started is None:
                started = time.monotonic()
            done += len(chunk)
            if progress:
                progress(done, size)
        assert started is not None
        return TransferResult("download", done, time.monotonic() - started)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def probe(
    host: str, port: int, count: int = 200, interval: float = 0.01, wait: float = 1.0
) -> ProbeResult:
    """Send ``count`` UDP probes ``interval`` s apart, wait ``wait`` s for late echoes."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sent_at: dict[int, float] = {}
    result = ProbeResult(sent=count)
    try:
        await loop.sock_connect(sock, (host, port))

        def readable() -> None:
            while True:
                try:
                    data = sock.recv(PROBE_SIZE + 16)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # ICMP unreachable: no listener
                    return
                if len(data) != PROBE_SIZE or not data.startswith(PROBE_MAGIC):
                    continue
                (seq,) = struct.unpack_from("!I", data, 4)
                at = sent_at.pop(seq, None)
                if at is not None:
                    result.rtts.append(time.monotonic() - at)

        loop.add_reader(sock.fileno(), readable)
        try:
            pad = bytes(PROBE_SIZE - 8)
            for seq in range(count):
                sent_at[seq] = time.monotonic()
                with contextlib.suppress(OSError):
                    sock.send(PROBE_MAGIC + struct.pack("!I", seq) + pad)
                await asyncio.sleep(interval)
            deadline = time.monotonic() + wait
            while sent_at and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            loop.remove_reader(sock.fileno())
    finally:
        sock.close()
    return result
