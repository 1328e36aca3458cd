"""The coordinator's status view for a big mesh: memory of the traffic history and the cost of
``GET /api/v1/status`` and ``GET /api/v1/peers/{name}/traffic``.

Run: ``uv run python core/bench/bench_status.py [--peers 2000]``. In-process, no network: the
peers are records and heartbeats fed to the coordinator's ``PeerStats`` as a day of traffic
(one heartbeat per peer every 10 s), then the answers are built and encoded the way the API
builds them. Prints figures (memory in MiB, milliseconds per answer); no assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import tracemalloc

from tunnelmesh.config import ServerConfig
from tunnelmesh.control.messages import Counters, Heartbeat, encode
from tunnelmesh.coordinator.api_admin import _rows
from tunnelmesh.coordinator.core import Coordinator
from tunnelmesh.coordinator.peerstats import PeerStats
from tunnelmesh.coordinator.store import PeerRecord


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=2000)
    ap.add_argument("--hours", type=float, default=24.0, help="traffic history to feed")
    args = ap.parse_args()
    n = args.peers
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ServerConfig(auth_token="bench-token-0123456789abcdef", data_dir=tmp)
        coord = Coordinator(cfg)
        now = time.time()
        for i in range(n):
            rec = PeerRecord(
                peer_id=f"{i:016x}",
                public_key="",
                name=f"peer{i}",
                mesh_ip=f"172.30.{i // 250}.{i % 250 + 2}",
                last_seen=now,
                transports={f"peer{j}": "udp" for j in range(i, i + 8)},
                rtt_ms={f"peer{j}": 1.5 for j in range(i, i + 8)},
                version="bench",
            )
            coord.peers[rec.peer_id] = rec
            coord.liveness.seen(rec.peer_id, now)
        view = coord.peers[f"{0:016x}"]
        view.transports = {f"peer{j}": "udp" for j in range(n)}

        stats = PeerStats()
        beats = int(args.hours * 3600 / 100)  # one heartbeat per 100 s touches every slot
        start = now - beats * 100.0
        tracemalloc.start()  # the history's memory is allocated at a peer's first heartbeat
        before = tracemalloc.take_snapshot()
        for i in range(n):
            stats.heartbeat(f"{i:016x}", Heartbeat(), start - 100.0)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        mem = sum(s.size_diff for s in after.compare_to(before, "filename"))
        fed = time.perf_counter()
        for b in range(beats):
            t = start + b * 100.0
            hb = Heartbeat(counters=Counters(bytes_received=b * 100_000, bytes_sent=b * 1000))
            for i in range(n):
                stats.heartbeat(f"{i:016x}", hb, t)
        fed = (time.perf_counter() - fed) / (beats * n) * 1e6
        coord.peerstats = stats

        rounds = 20
        t0 = time.perf_counter()
        for _ in range(rounds):
            body = encode({"peers": _rows(coord, view)})
        status_ms = (time.perf_counter() - t0) / rounds * 1000
        t0 = time.perf_counter()
        for i in range(n):
            encode(stats.traffic[f"{i:016x}"].series("hour", now))
        series_ms = (time.perf_counter() - t0) / n * 1000

    print(f"peers: {n}, history fed: {args.hours:g} h, {fed:.1f} us per heartbeat recorded")
    print(f"traffic history memory: {mem / 2**20:.1f} MiB ({mem / n / 1024:.1f} KiB per peer)")
    print(
        f"GET /api/v1/status body: {len(body) / 1024:.0f} KiB, built+encoded in {status_ms:.1f} ms"
    )
    print(f"GET /api/v1/peers/NAME/traffic?span=hour: {series_ms:.3f} ms per peer")
    asyncio.run(asyncio.sleep(0))


if __name__ == "__main__":
    main()
