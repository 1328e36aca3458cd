"""The dashboard with many peers: the peers page's server time and the live feed's CPU.

    uv run python tunnelmesh_admin/bench/bench_admin.py [--peers 2000] [--paths 32] [--ticks 60]

A real coordinator (SQLite state in a temp dir) is loaded with ``--peers`` simulated peers
(real keys, each with ``--paths`` paths, a tenth of them relayed); the dashboard is served on
127.0.0.1 and called over HTTPS from one peer's mesh IP (the mesh is 127.77.0.0/16, so a
loopback socket can have it). Printed, beside the issue's anchors (not asserted):

* the peers page: the handler's time on the server (render included) and the whole HTTPS
  request, median and worst of ``--pages`` calls; anchor: under 1 s server-side;
* the live feed at one update a second: the CPU (process time) of one tick with a tenth of the
  peers changed since the last (each peer heartbeats every 10 s), with ``--listeners``
  listeners; as a share of one core at 1 tick/s; anchor: under 5 %.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from tunnelmesh.config import ServerConfig
from tunnelmesh.control.messages import Counters, Heartbeat
from tunnelmesh.coordinator import Coordinator, PeerRecord, SqliteStore
from tunnelmesh.coordinator.api import build_app
from tunnelmesh.coordinator.ca import client_ssl_context
from tunnelmesh.identity import Identity
from tunnelmesh_admin.config import AdminSection
from tunnelmesh_admin.feed import PeerFeed
from tunnelmesh_admin.service import AdminService, install
from tunnelmesh_admin.state import SERVICE_KEY

TOKEN = "bench-admin-token-0123456789abcdef"


async def populate(store: SqliteStore, peers: int, paths: int) -> list[PeerRecord]:
    net = ipaddress.ip_network("127.77.0.0/16")
    hosts = net.hosts()
    next(hosts)
    names = [f"peer{i:04d}" for i in range(peers)]
    records = []
    now = time.time()
    rng = random.Random(1)
    for i, name in enumerate(names):
        ident = Identity.generate()
        others = rng.sample(names, min(paths, peers - 1))
        rec = PeerRecord(
            peer_id=ident.peer_id,
            public_key=ident.public_openssh,
            name=name,
            mesh_ip=str(next(hosts)),
            is_admin=i == 0,
            created_at=now,
            last_seen=now,
            transports={o: ("relay" if rng.random() < 0.1 else "udp") for o in others if o != name},
            rtt_ms={o: rng.uniform(1, 80) for o in others if o != name},
            counters=Counters(bytes_received=rng.randrange(10**9), bytes_sent=rng.randrange(10**9)),
            version="0.1.0",
        )
        await store.put_peer(rec)
        records.append(rec)
    return records


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tm-bench-admin-") as tmp:
        data = Path(tmp) / "state"
        data.mkdir(mode=0o700)
        cfg = ServerConfig(
            auth_token=TOKEN,
            listen="127.0.0.1:0",
            mesh_cidr="127.77.0.0/16",
            data_dir=str(data),
            admin_peers=[],
            sections={"admin": AdminSection(enabled=True, listen="127.0.0.1:0")},
        )
        store = SqliteStore(data / "state.db")
        await store.open()
        t0 = time.perf_counter()
        records = await populate(store, args.peers, args.paths)
        await store.close()
        print(
            f"{args.peers} simulated peers, {args.paths} paths each ({time.perf_counter() - t0:.1f} s to make)"
        )
        coord = Coordinator(cfg, store=SqliteStore(data / "state.db"))
        await coord.load()
        for rec in coord.peers.values():
            coord.liveness.seen(rec.peer_id, time.time())
        app = build_app(coord)
        service = install(app, coord)
        assert isinstance(service, AdminService)
        await service.start()
        assert service.app is not None and service.app[SERVICE_KEY] is service
        server_times: list[float] = []
        caller = records[1]
        conn = aiohttp.TCPConnector(
            ssl=client_ssl_context(coord.ca.cert_pem if coord.ca else ""),
            local_addr=(caller.mesh_ip, 0),
        )
        async with aiohttp.ClientSession(connector=conn) as http:
            round_trips = []
            size = 0
            for _ in range(args.pages):
                start = time.perf_counter()
                async with http.get(
                    f"https://127.0.0.1:{service.port}/peers",
                    headers={"Host": f"this.tm:{service.port}"},
                    server_hostname="this.tm",
                ) as resp:
                    body = await resp.read()
                    assert resp.status == 200, body[:200]
                    # the dashboard's own measure of its handler (render included)
                    timing = resp.headers["Server-Timing"]
                    server_times.append(float(timing.split("dur=")[1]) / 1000)
                    size = len(body)
                round_trips.append(time.perf_counter() - start)
        print(
            f"peers page: server {statistics.median(server_times) * 1000:.0f} ms median, "
            f"{max(server_times) * 1000:.0f} ms worst; HTTPS round trip "
            f"{statistics.median(round_trips) * 1000:.0f} ms median; {size / 1e6:.2f} MB of HTML "
            f"({args.pages} calls)   anchor: < 1000 ms server-side"
        )

        feed = PeerFeed(coord, interval=3600)  # ticked by hand below
        subs = [feed.subscribe(r.peer_id) for r in records[: args.listeners]]
        feed.publish()  # the snapshot
        rng = random.Random(2)
        cpu = []
        sent = 0
        peers = list(coord.peers.values())
        now = time.time()
        for _ in range(args.ticks):
            now += 1.0
            for rec in rng.sample(peers, len(peers) // 10):  # heartbeats of the last second
                c = rec.counters
                rec.counters = Counters(
                    bytes_received=c.bytes_received + rng.randrange(10**6),
                    bytes_sent=c.bytes_sent + rng.randrange(10**6),
                )
                rec.last_seen = now
                coord.peerstats.heartbeat(rec.peer_id, Heartbeat(counters=rec.counters), now)
            start = time.process_time()
            feed.publish()
            cpu.append(time.process_time() - start)
            for sub in subs:
                while not sub.queue.empty():
                    sent += len(sub.queue.get_nowait())
        await feed.aclose()
        tick = statistics.mean(cpu)
        print(
            f"live feed: {tick * 1000:.1f} ms CPU per tick (median "
            f"{statistics.median(cpu) * 1000:.1f}, worst {max(cpu) * 1000:.1f}) with "
            f"{args.listeners} listeners and {len(peers) // 10} changed peers per tick = "
            f"{tick * 100:.1f} % of a core at 1 update/s; {sent / args.ticks / 1e3:.0f} kB sent "
            f"per tick to all listeners   anchor: < 5 %"
        )
        await service.stop()
        await coord.store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--paths", type=int, default=32)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--ticks", type=int, default=60)
    parser.add_argument("--listeners", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
