"""A peer sends relay frames to random names: the coordinator's RSS before and after (loopback).

    uv run python tunnelmesh_relay/bench/bench_relay_unreached.py [--frames 100000] [--rounds 2]

A coordinator with only the relay plugin runs in a child process on 127.0.0.1 (ephemeral ports,
the relay's byte-rate limit off, so every frame reaches the "unreached" path). One registered
peer opens its relay WebSocket and sends ``--frames`` SEND messages, each to a fresh random
name with one WireGuard keepalive-sized record, ``--rounds`` times. After each round (once the
relay has counted every frame as unreachable, read from ``/api/v1/relay/stats``) the child's
VmRSS is printed. Anchor: the first figure, after 1,000 warm-up frames; a bounded relay stays
near it, one that remembers every name grows with each round. Figures, not a pass/fail test.
Only loopback is used; the run is bounded by ``--frames`` and ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh_relay.proto import SEND, encode_message

CHILD = """
import asyncio, json, sys
from tunnelmesh_relay.server import RelayConfig
from tunnelmesh_relay.testing import RelayMesh

async def main():
    relay = RelayConfig(rate_bytes_per_second=0)
    async with RelayMesh(None, ["flooder"], relay=relay) as mesh:
        info = {"url": mesh.url, "ca": mesh.ca_pem, "session": mesh.sessions["flooder"]}
        print(json.dumps(info), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""

DATA = bytes((4, 0, 0, 0)) + bytes(28)  # a transport message of the smallest size


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def flood(info: dict[str, str], pid: int, frames: int, rounds: int, timeout: float) -> None:
    ssl_ctx = client_ssl_context(info["ca"])
    headers = {"Authorization": f"Bearer {info['session']}"}
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            info["url"] + "/api/v1/relay",
            headers=headers,
            ssl=ssl_ctx,
            server_hostname=COORDINATOR_NAME,
        )
        notices = 0

        async def drain() -> None:
            nonlocal notices
            async for _ in ws:
                notices += 1

        reader = asyncio.create_task(drain())

        async def unreachable() -> int:
            async with http.get(
                info["url"] + "/api/v1/relay/stats",
                headers=headers,
                ssl=ssl_ctx,
                server_hostname=COORDINATOR_NAME,
            ) as resp:
                stats = await resp.json()
            return int(stats["peers"].get("flooder", {}).get("dropped_unreachable", 0))

        async def send(n: int) -> None:
            target = await unreachable() + n
            for _ in range(n):
                await ws.send_bytes(encode_message(SEND, os.urandom(8).hex(), [DATA]))
            deadline = time.monotonic() + timeout
            while await unreachable() < target:
                if time.monotonic() > deadline:
                    raise TimeoutError("the relay did not count every frame in time")
                await asyncio.sleep(0.2)

        await send(1000)
        await asyncio.sleep(0.5)
        anchor = rss_kib(pid)
        print(f"coordinator RSS after 1,000 warm-up frames: {anchor / 1024:.1f} MiB (anchor)")
        for r in range(1, rounds + 1):
            started = time.perf_counter()
            await send(frames)
            took = time.perf_counter() - started
            now = rss_kib(pid)
            print(
                f"after round {r} ({frames:,} frames to random names, {took:.1f} s): "
                f"RSS {now / 1024:.1f} MiB ({(now - anchor) / 1024:+.1f} MiB)"
            )
        print(f"UNREACHED notices received: {notices:,}")
        await ws.close()
        reader.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TUNNELMESH_HOME": os.environ.get("TUNNELMESH_HOME", "")},
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        info = json.loads(child.stdout.readline())
        asyncio.run(flood(info, child.pid, args.frames, args.rounds, args.timeout))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


if __name__ == "__main__":
    main()
