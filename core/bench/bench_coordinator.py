"""Scale benchmark: many simulated peers register and heartbeat against one coordinator.

Starts ``tunnelmesh serve`` as its own process on 127.0.0.1 (ephemeral port, temporary state
directory), then runs the simulated peers in one or more client processes, all over real HTTPS
on loopback. Every run is bounded: ``--peers`` registrations, then ``--duration`` seconds of
heartbeats at the coordinator's interval. Prints:

* registration rate (registrations per second, whole phase, all clients together);
* heartbeat latency p50/p99/max (client side, request sent to answer read);
* the coordinator's memory (VmRSS and peak VmHWM from /proc) after the run;
* optionally (``--push N``) the time for a join to reach N push-channel subscribers.

Usage::

    uv run python core/bench/bench_coordinator.py --peers 2000 --duration 30 --workers 2

It is not a test: figures depend on the machine and its load (say how loaded it was).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

TOKEN = "bench-token-0123456789abcdef0123456789"
MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"


def start_coordinator(
    state: Path, interval: float, profile: str = ""
) -> tuple[subprocess.Popen[str], str]:
    cfg = state / "server.yaml"
    cfg.write_text(
        f'auth_token: "{TOKEN}"\nlisten: "127.0.0.1:0"\nstun_listen: "127.0.0.1:0"\n'
        f'data_dir: "{state / "state"}"\nheartbeat_interval: {interval}\n'
        "auth_failures_burst: 100000\njoins_burst: 100000\n"
    )
    env = dict(
        os.environ,
        TUNNELMESH_HOME=str(state / "home"),
        TUNNELMESH_LOAD_PLUGINS="",
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            *_entry(state, profile),
            "--log-level",
            "warning",
            "serve",
            "-c",
            str(cfg),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if m := re.search(r"https://127\.0\.0\.1:\d+", line):
            return proc, m.group(0)
        if not line:
            break
    proc.kill()
    raise SystemExit("the coordinator did not start")


def _entry(state: Path, profile: str) -> list[str]:
    if not profile:
        return ["-c", MAIN]
    script = state / "tm_main.py"  # cProfile runs a file, not -c
    script.write_text(MAIN.replace("; ", "\n") + "\n")
    return ["-m", "cProfile", "-o", profile, str(script)]


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def _worker(
    url: str, count: int, index: int, duration: float, concurrency: int, push: int
) -> dict[str, object]:
    from tunnelmesh.control.client import ControlClient, fetch_ca
    from tunnelmesh.identity import Identity

    ca = await fetch_ca(url, TOKEN)
    clients = [
        ControlClient(
            server=url,
            identity=Identity.generate(),
            ca_pem=ca,
            auth_token=TOKEN,
            name=f"w{index}-peer-{i}",
            connections=1,
        )
        for i in range(count)
    ]
    sem = asyncio.Semaphore(concurrency)
    reg_lat: list[float] = []

    async def register(c: ControlClient) -> None:
        async with sem:
            t = time.perf_counter()
            await c.register()
            reg_lat.append(time.perf_counter() - t)

    reg_start = time.time()
    await asyncio.gather(*(register(c) for c in clients))
    reg_end = time.time()

    # Push channels for the first `push` peers (they count joins they hear about).
    heard: list[float] = []
    push_tasks = []
    for c in clients[:push]:
        c.add_callback(lambda ch: heard.append(time.time()))
        push_tasks.append(asyncio.create_task(c._push_loop()))

    hb_lat: list[tuple[float, float]] = []
    errors = 0
    kinds: dict[str, int] = {}
    stop_at = time.monotonic() + duration

    async def beat(c: ControlClient) -> None:
        nonlocal errors
        await asyncio.sleep(random.uniform(0, c.heartbeat_interval))
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            sent = time.time()
            try:
                await c.heartbeat()
                hb_lat.append((sent, time.perf_counter() - t))
            except Exception as exc:
                errors += 1
                kinds[str(exc)[:80]] = kinds.get(str(exc)[:80], 0) + 1
            await asyncio.sleep(c.heartbeat_interval)

    await asyncio.gather(*(beat(c) for c in clients))
    for t in push_tasks:
        t.cancel()
    await asyncio.gather(*push_tasks, return_exceptions=True)
    for c in clients:
        await c.aclose()
    return {
        "reg_start": reg_start,
        "reg_end": reg_end,
        "reg_lat": reg_lat,
        "hb_lat": hb_lat,
        "errors": errors,
        "heard": len(heard),
        "kinds": kinds,
    }


def worker(
    url: str, count: int, index: int, duration: float, concurrency: int, push: int
) -> dict[str, object]:
    return asyncio.run(_worker(url, count, index, duration, concurrency, push))


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=30.0, help="heartbeat phase, seconds")
    ap.add_argument("--interval", type=float, default=10.0, help="heartbeat interval, seconds")
    ap.add_argument("--workers", type=int, default=2, help="client processes")
    ap.add_argument(
        "--concurrency", type=int, default=32, help="registrations in flight per worker"
    )
    ap.add_argument("--push", type=int, default=0, help="push channels per worker")
    ap.add_argument("--profile", default="", help="write a cProfile of the coordinator here")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp:
        proc, url = start_coordinator(Path(tmp), args.interval, args.profile)
        try:
            per = [
                args.peers // args.workers + (i < args.peers % args.workers)
                for i in range(args.workers)
            ]
            t0 = time.time()
            with ProcessPoolExecutor(args.workers) as pool:
                futures = [
                    pool.submit(worker, url, n, i, args.duration, args.concurrency, args.push)
                    for i, n in enumerate(per)
                ]
                results = [f.result(timeout=args.duration + 600) for f in futures]
            wall = time.time() - t0
            mem = memory_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
    reg_start = min(float(r["reg_start"]) for r in results)  # type: ignore[arg-type]
    reg_end = max(float(r["reg_end"]) for r in results)  # type: ignore[arg-type]
    reg_lat = [x for r in results for x in r["reg_lat"]]  # type: ignore[attr-defined]
    hb_all = [x for r in results for x in r["hb_lat"]]  # type: ignore[attr-defined]
    hb = [lat for _, lat in hb_all]
    # Steady state: from one interval after the last registration (first heartbeats open new
    # TLS connections while other clients are still registering).
    steady = [lat for sent, lat in hb_all if sent >= reg_end + args.interval]
    errors = sum(int(r["errors"]) for r in results)  # type: ignore[call-overload]
    print(
        f"machine: {os.cpu_count()} cores, load average before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f}"
    )
    print(f"peers: {args.peers} in {args.workers} client processes; wall {wall:.1f}s")
    print(
        f"registration: {len(reg_lat)} in {reg_end - reg_start:.1f}s = "
        f"{len(reg_lat) / (reg_end - reg_start):.0f}/s; latency p50 "
        f"{statistics.median(reg_lat) * 1000:.1f} ms, p99 {pct(reg_lat, 99) * 1000:.1f} ms"
    )
    print(
        f"heartbeats: {len(hb)} over {args.duration:.0f}s at {args.interval:g}s interval, "
        f"{errors} errors; latency p50 {statistics.median(hb) * 1000:.1f} ms, "
        f"p99 {pct(hb, 99) * 1000:.1f} ms, max {max(hb) * 1000:.1f} ms"
    )
    if steady:
        print(
            f"heartbeats, steady state ({len(steady)} after the last registration + one "
            f"interval): p50 {statistics.median(steady) * 1000:.1f} ms, "
            f"p99 {pct(steady, 99) * 1000:.1f} ms, max {max(steady) * 1000:.1f} ms"
        )
    print(
        f"coordinator memory: RSS {mem['VmRSS'] / 1024:.1f} MiB, peak {mem['VmHWM'] / 1024:.1f} MiB"
    )
    for r in results:
        for k, v in r["kinds"].items():  # type: ignore[attr-defined]
            print(f"  error x{v}: {k}")
    if args.push:
        heard = sum(int(r["heard"]) for r in results)  # type: ignore[call-overload]
        print(f"push channels: {args.push * args.workers}, change events heard: {heard}")


if __name__ == "__main__":
    main()
