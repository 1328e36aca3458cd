"""State store benchmark: PostgreSQL (several stores, as several coordinators) beside SQLite.

Runs the store operations a coordinator does at scale against a throwaway PostgreSQL cluster
(``tunnelmesh.testing.postgres``, Debian's server in a temporary directory, 127.0.0.1) and, as the
anchor, against SQLite in a temporary directory:

* registrations: ``--peers`` claim_peer calls (name and address chosen by the store), spread over
  ``--stores`` stores with ``--concurrency`` in flight each: claims per second;
* liveness: one put_liveness batch of every peer (what the flusher writes), seconds;
* a coordinator start: load_peers of every peer, seconds;
* change feed: time from a put_peer through one store to the change at another (PostgreSQL).

Usage::

    uv run python tunnelmesh_postgres/bench/bench_store.py --peers 10000 --stores 2

Not a test: the figures depend on the machine and its load; say how loaded it was.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from tunnelmesh.coordinator.alloc import IpAllocator, name_candidates
from tunnelmesh.coordinator.sqlite import SqliteStore
from tunnelmesh.coordinator.store import PeerRecord, StateStore
from tunnelmesh.testing.postgres import PostgresCluster, postgres_unavailable_reason
from tunnelmesh_postgres.store import PostgresStore

NAMES = 0
"""How many distinct names the peers ask for (0: each its own); set by --shared-names."""


def _peer(i: int) -> PeerRecord:
    return PeerRecord(
        peer_id=f"{i:016x}",
        public_key=f"ssh-ed25519 BENCHKEY{i}",
        name=f"node{i % NAMES}" if NAMES else f"node{i}",  # shared: suffixes decide
        mesh_ip="",
        created_at=1.0,
        last_seen=1.0,
        endpoints=["192.0.2.1:51820"],
    )


async def run(
    make: Callable[[], StateStore], stores: int, peers: int, concurrency: int
) -> dict[str, float]:
    opened = [make() for _ in range(stores)]
    for s in opened:
        await s.open()
    pool = IpAllocator("172.30.0.0/16")
    sem = [asyncio.Semaphore(concurrency) for _ in opened]
    try:

        async def claim(i: int) -> PeerRecord:
            k = i % stores
            async with sem[k]:
                rec = _peer(i)
                return await opened[k].claim_peer(
                    rec,
                    names=name_candidates(rec.name, rename=True),
                    ips=pool.candidates(i.to_bytes(4, "big")),
                )

        t0 = time.perf_counter()
        got = await asyncio.gather(*(claim(i) for i in range(peers)))
        claim_s = time.perf_counter() - t0
        assert len({r.mesh_ip for r in got}) == peers and len({r.name for r in got}) == peers
        t0 = time.perf_counter()
        await opened[0].put_liveness([msgspec.structs.replace(r, last_seen=2.0) for r in got])
        live_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = await opened[-1].load_peers()
        load_s = time.perf_counter() - t0
        assert len(loaded) == peers
        feed_ms = float("nan")
        if stores > 1 and isinstance(opened[0], PostgresStore):
            lat = []
            feed = opened[1].changes()
            for j in range(20):
                rec = got[j]
                t0 = time.perf_counter()
                await opened[0].put_peer(rec)
                async for change in feed:
                    if change.kind == "peer" and change.key == rec.peer_id:
                        break
                lat.append((time.perf_counter() - t0) * 1000)
            feed_ms = statistics.median(lat)
        return {
            "claims_per_s": peers / claim_s,
            "liveness_s": live_s,
            "load_s": load_s,
            "feed_ms": feed_ms,
        }
    finally:
        for s in opened:
            await s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=2000)
    ap.add_argument("--stores", type=int, default=2, help="PostgreSQL stores (coordinators)")
    ap.add_argument("--concurrency", type=int, default=16, help="claims in flight per store")
    ap.add_argument(
        "--shared-names",
        type=int,
        default=0,
        help="the peers ask for only this many names (contention: name-2, name-3, ...)",
    )
    args = ap.parse_args()
    global NAMES
    NAMES = args.shared_names
    reason = postgres_unavailable_reason()
    if reason:
        raise SystemExit(f"bench_store: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "state" / "state.db"
        sqlite = asyncio.run(run(lambda: SqliteStore(db), 1, args.peers, args.concurrency))
    with PostgresCluster() as cluster:
        dsn = cluster.create_database("bench")
        pg = asyncio.run(run(lambda: PostgresStore(dsn), args.stores, args.peers, args.concurrency))
    names = f", {args.shared_names} names asked for" if args.shared_names else ""
    print(f"state store, {args.peers} peers{names} (anchor: SQLite, one store)")
    print(f"{'':28}{'SQLite x1':>14}{f'PostgreSQL x{args.stores}':>18}")
    for key, label, fmt in (
        ("claims_per_s", "registrations (claims)/s", "{:.0f}"),
        ("liveness_s", "liveness batch, s", "{:.3f}"),
        ("load_s", "load_peers at start, s", "{:.3f}"),
        ("feed_ms", "change A -> B, ms (p50)", "{:.1f}"),
    ):
        print(f"{label:28}{fmt.format(sqlite[key]):>14}{fmt.format(pg[key]):>18}")


if __name__ == "__main__":
    main()
