"""Scale benchmark: many simulated peers register and heartbeat against the coordinators.

Starts ``tunnelmesh serve`` as its own process on 127.0.0.1 (temporary state directory), or
``--coordinators N`` of them on one throwaway PostgreSQL cluster (``--postgres``: Debian's
server in a temporary directory, stopped after; see ``tunnelmesh.testing.postgres``), then runs
the simulated peers in one or more client processes spread over the coordinators, all over real
HTTPS on loopback. Every run is bounded: ``--peers`` registrations, then ``--duration`` seconds
of heartbeats at the coordinator's interval. Prints:

* registration rate (registrations per second, whole phase, all clients together);
* heartbeat latency p50/p99/max (client side, request sent to answer read);
* each coordinator's memory (VmRSS and peak VmHWM from /proc) after the run;
* optionally (``--push N``) what one peer change costs on the push channel: N subscribers per
  worker count the bytes of the delta each receives for one endpoint change (spread over the
  coordinators, so with several coordinators it also went through the change feed).

Usage::

    uv run python core/bench/bench_coordinator.py --peers 2000 --duration 30 --workers 2
    uv run python core/bench/bench_coordinator.py --peers 10000 --postgres --coordinators 2

The anchor: 2,000 peers on one coordinator (SQLite), 2 client processes, this repository at
7f6ca51: about 157 MiB RSS (docs/control-plane.md "Scale").

It is not a test: figures depend on the machine and its load (say how loaded it was).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

TOKEN = "bench-token-0123456789abcdef0123456789"
MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"


def start_coordinator(
    state: Path, interval: float, profile: str = "", *, port: int = 0, postgres: str = ""
) -> tuple[subprocess.Popen[str], str]:
    """One ``tunnelmesh serve``; with ``postgres`` (a connection string) on that database, with
    its ``public_url`` on ``port``."""
    state.mkdir(parents=True, exist_ok=True)
    cfg = state / "server.yaml"
    extra = ""
    if postgres:
        dsn, key = state / "dsn", state / "state.key"
        for f, text in ((dsn, postgres), (key, "ab" * 32)):  # the same key for every one
            f.write_text(text)
            f.chmod(0o600)
        extra = (
            f'public_url: "https://127.0.0.1:{port}"\n'
            f'state: {{backend: postgres, dsn_file: "{dsn}", encryption_key_file: "{key}"}}\n'
        )
    cfg.write_text(
        f'auth_token: "{TOKEN}"\nlisten: "127.0.0.1:{port}"\nstun_listen: "127.0.0.1:0"\n'
        f'data_dir: "{state / "state"}"\nheartbeat_interval: {interval}\n'
        "auth_failures_burst: 100000\njoins_burst: 100000\n" + extra
    )
    env = dict(
        os.environ,
        TUNNELMESH_HOME=str(state / "home"),
        TUNNELMESH_LOAD_PLUGINS="postgres" if postgres else "",
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    reg_failed = 0
    kinds: dict[str, int] = {}

    async def register(c: ControlClient) -> None:
        nonlocal reg_failed
        async with sem:
            t = time.perf_counter()
            try:
                await c.register_with_retry(attempts=5)  # as a joining node does
            except Exception as exc:
                reg_failed += 1
                kinds[f"registration: {exc}"[:80]] = kinds.get(f"registration: {exc}"[:80], 0) + 1
                return
            reg_lat.append(time.perf_counter() - t)

    reg_start = time.time()
    await asyncio.gather(*(register(c) for c in clients))
    reg_end = time.time()
    failed_clients = [c for c in clients if not c.session_token]
    clients = [c for c in clients if c.session_token]
    for c in failed_clients:
        await c.aclose()

    # Push channels for the first `push` peers: they count the changes they hear about and
    # the bytes of every peer delta they receive.
    heard: list[float] = []
    delta_bytes: list[int] = []
    push_tasks = []
    for c in clients[:push]:
        c.add_callback(lambda ch: heard.append(time.time()))
        c._handle_frame = _counting(c._handle_frame, delta_bytes)  # type: ignore[method-assign]
        push_tasks.append(asyncio.create_task(c._push_loop()))

    hb_lat: list[tuple[float, float]] = []
    errors = 0
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
    # One peer change: the last client's endpoints change (its heartbeat carries them).
    if push:
        await asyncio.sleep(2.0)  # what the heartbeats changed has been pushed
        delta_bytes.clear()
        changer = clients[-1]
        changer._endpoints = lambda: [f"198.51.100.{index + 1}:4{index:04d}"]
        try:
            await changer.heartbeat()
        except Exception as exc:  # counted like the other heartbeats; the figure is then absent
            errors += 1
            kinds[f"the change: {exc}"[:80]] = kinds.get(f"the change: {exc}"[:80], 0) + 1
        # Pushed by every coordinator (PUSH_COALESCE, the change feed): until the count rests.
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 2.0:
            await asyncio.sleep(0.2)
            if len(delta_bytes) != last:
                last, quiet_since = len(delta_bytes), time.monotonic()
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
        "reg_failed": reg_failed,
        "heard": len(heard),
        "kinds": kinds,
        "delta_bytes": delta_bytes,
    }


def _counting(handle: Callable[[str], None], sizes: list[int]) -> Callable[[str], None]:
    def counted(data: str) -> None:
        sizes.extend(len(line) for line in data.split("\n") if line.startswith('{"type":"peer"'))
        handle(data)

    return counted


def worker(
    url: str, count: int, index: int, duration: float, concurrency: int, push: int
) -> dict[str, object]:
    return asyncio.run(_worker(url, count, index, duration, concurrency, push))


def _running(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is not None:
            raise SystemExit(f"a coordinator exited ({p.returncode})")


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
    ap.add_argument(
        "--coordinators", type=int, default=1, help="coordinators (several need --postgres)"
    )
    ap.add_argument(
        "--postgres", action="store_true", help="state on a throwaway PostgreSQL cluster"
    )
    args = ap.parse_args()
    if args.coordinators > 1 and not args.postgres:
        ap.error("several coordinators share a database: add --postgres")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp, contextlib.ExitStack() as stack:
        dsn = ""
        if args.postgres:
            from tunnelmesh.testing.postgres import PostgresCluster, postgres_unavailable_reason

            reason = postgres_unavailable_reason()
            if reason is not None:
                raise SystemExit(f"--postgres: {reason}")
            cluster = stack.enter_context(PostgresCluster())  # started; closed (rm) after
            dsn = cluster.create_database("bench")
        procs: list[subprocess.Popen[str]] = []
        urls: list[str] = []
        try:
            for i in range(args.coordinators):
                proc, url = start_coordinator(
                    Path(tmp) / f"c{i}",
                    args.interval,
                    args.profile if i == 0 else "",
                    port=_free_port() if dsn else 0,
                    postgres=dsn,
                )
                procs.append(proc)
                urls.append(url)
            per = [
                args.peers // args.workers + (i < args.peers % args.workers)
                for i in range(args.workers)
            ]
            t0 = time.time()
            with ProcessPoolExecutor(args.workers) as pool:
                futures = [
                    pool.submit(
                        worker,
                        urls[i % len(urls)],
                        n,
                        i,
                        args.duration,
                        args.concurrency,
                        args.push,
                    )
                    for i, n in enumerate(per)
                ]
                results = [f.result(timeout=args.duration + 1800) for f in futures]
            wall = time.time() - t0
            _running(procs)
            mems = [memory_kib(p.pid) for p in procs]
        finally:
            for proc in procs:
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
    reg_failed = sum(int(r["reg_failed"]) for r in results)  # type: ignore[call-overload]
    print(
        f"machine: {os.cpu_count()} cores, load average before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f}"
    )
    store = "PostgreSQL (throwaway cluster)" if args.postgres else "SQLite"
    print(
        f"peers: {args.peers} in {args.workers} client processes over {len(urls)} "
        f"coordinator(s), state on {store}; wall {wall:.1f}s"
    )
    print(
        f"registration: {len(reg_lat)} in {reg_end - reg_start:.1f}s = "
        f"{len(reg_lat) / (reg_end - reg_start):.0f}/s, {reg_failed} failed after 5 tries; "
        f"latency p50 "
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
    for i, mem in enumerate(mems):
        print(
            f"coordinator {i} memory: RSS {mem['VmRSS'] / 1024:.1f} MiB, "
            f"peak {mem['VmHWM'] / 1024:.1f} MiB"
        )
    for r in results:
        for k, v in r["kinds"].items():  # type: ignore[attr-defined]
            print(f"  error x{v}: {k}")
    if args.push:
        heard = sum(int(r["heard"]) for r in results)  # type: ignore[call-overload]
        print(f"push channels: {args.push * args.workers}, change events heard: {heard}")
        sizes = [x for r in results for x in r["delta_bytes"]]  # type: ignore[attr-defined]
        changes = len(per)  # one endpoint change per worker
        if sizes:
            # Each worker changes one peer after its heartbeat phase and listens until the
            # deltas rest; a worker that finished first no longer hears the other's change.
            print(
                f"push cost of a peer change: {len(sizes)} deltas received by "
                f"{args.push * args.workers} subscribers for {changes} changes (one per "
                f"worker), {statistics.mean(sizes):.0f} bytes each (max {max(sizes)}): with "
                f"all {args.peers} peers subscribed, one change is {args.peers} messages, "
                f"{statistics.mean(sizes) * args.peers / 1024:.0f} KiB"
            )


if __name__ == "__main__":
    main()
