"""Scale benchmark: many simulated peers register and heartbeat against the coordinators.

Starts ``tunnelmesh serve`` as its own process on 127.0.0.1 (temporary state directory), or
``--coordinators N`` of them on one throwaway PostgreSQL cluster (``--postgres``: Debian's
server in a temporary directory, stopped after; see ``tunnelmesh.testing.postgres``), then runs
the simulated peers in one or more client processes (on uvloop) spread over the coordinators,
all over real HTTPS on loopback. Every run is bounded: ``--peers`` registrations, then
``--duration`` seconds of heartbeats at the coordinator's interval, the whole client part
within ``--timeout``; coordinators, client processes and the cluster are stopped by PID on
the way out, also after a failure, Ctrl-C or SIGTERM.

A simulated peer does what a node does, as cheaply as the client side allows: it registers
with the node's own ``ControlClient`` (challenge, signature, token), then heartbeats at once
and every interval (jittered, retried after 2 s at most) with the same request a node's
``ControlClient.heartbeat`` sends, over one kept-alive TLS connection of its own, written and
read by a minimal HTTP/1.1 protocol instead of an aiohttp session per peer (which cost the
client processes about four times the CPU per heartbeat). Prints:

* registration rate (registrations per second, whole phase, all clients together);
* heartbeat latency p50/p99/max (client side, request sent to answer read), errors, and the
  TLS connections the heartbeats opened (one per peer when nothing broke);
* each coordinator's memory (VmRSS and peak VmHWM from /proc) after the run;
* the CPU time each coordinator, the client processes, PostgreSQL and the rest of the machine
  used in the registration phase and in the steady heartbeat phase, per registration and per
  heartbeat (all coordinators' together): says whether the coordinators or the simulator were
  the limit;
* optionally (``--push N``) what one peer change costs on the push channel: N subscribers per
  worker count the bytes of the delta each receives for one endpoint change (spread over the
  coordinators, so with several coordinators it also went through the change feed).

Usage::

    uv run python core/bench/bench_coordinator.py --peers 2000 --duration 30 --workers 2
    uv run python core/bench/bench_coordinator.py --peers 10000 --postgres --coordinators 2
    uv run python core/bench/bench_coordinator.py --suite --duration 60   # issue 18's figures

``--suite`` makes one run each of 2,000 peers on one coordinator (SQLite), 10,000 on one
(SQLite) and 10,000 on two (PostgreSQL), 50 push channels per client process unless ``--push``
says otherwise, and prints their figures side by side. Every run ends with the anchor
(:data:`ANCHOR`, the 2,000-peer figures measured on the development machine).

It is not a test: figures depend on the machine and its load (say how loaded it was).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import multiprocessing
import os
import random
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
from aiohttp.http import SERVER_SOFTWARE as USER_AGENT  # what aiohttp's client sends
from tunnelmesh.control.client import (
    ApiRequestError,
    ControlClient,
    CoordinatorUnreachable,
    _error_from,
    fetch_ca,
)
from tunnelmesh.control.messages import encode
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh.identity import Identity
from tunnelmesh.logs import redactor

TOKEN = "bench-token-0123456789abcdef0123456789"
MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"
T = TypeVar("T")


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
    proc.wait()
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


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (/proc/PID/stat), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuSampler:
    """Samples, every half second in a thread, the CPU time of each process of the run by
    group (each coordinator, the client processes, PostgreSQL's server processes) and of the
    whole machine; :meth:`report` gives what each used between two moments."""

    def __init__(self, groups: Callable[[], dict[int, str]]) -> None:
        self.groups = groups
        self.samples: list[tuple[float, tuple[int, int], dict[int, tuple[str, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            now, machine = time.time(), machine_ticks()
            per: dict[int, tuple[str, int]] = {}
            for pid, group in self.groups().items():
                ticks = cpu_ticks(pid)
                if ticks is not None:
                    per[pid] = (group, ticks)
            self.samples.append((now, machine, per))

    def report(self, start: float, end: float) -> tuple[float, dict[str, float], float]:
        """(seconds, {group: CPU seconds}, the machine's busy CPU seconds) from the first
        sample at or after ``start`` to the last at or before ``end``."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0, {}, 0.0
        (t0, m0, first), (t1, m1, last) = inside[0], inside[-1]
        hz = os.sysconf("SC_CLK_TCK")
        used: dict[str, float] = {}
        for pid, (group, ticks) in last.items():
            # A process started inside the window (a PostgreSQL backend) counts from zero.
            before = first[pid][1] if pid in first else 0
            used[group] = used.get(group, 0.0) + (ticks - before) / hz
        return t1 - t0, used, (m1[0] - m0[0]) / hz


def _parents() -> dict[int, int]:
    """Every live process's parent (/proc)."""
    out = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(Path(stat).parent.name)] = int(fields[1])
    return out


def run_groups(coordinators: list[int], postmaster: Callable[[], int | None]) -> dict[int, str]:
    """The processes of this run by group: each coordinator, the client processes (the other
    children of this one), PostgreSQL's postmaster and its backends."""
    parents = _parents()
    groups = {pid: f"coordinator {i}" for i, pid in enumerate(coordinators)}
    me = os.getpid()
    pm = postmaster()
    for pid, parent in parents.items():
        if parent == me and pid not in groups:
            groups[pid] = "clients"
        elif pm is not None and (pid == pm or parent == pm):
            groups[pid] = "postgres"
    return groups


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection over TLS that answers one request at a time: what a
    simulated peer's heartbeats go over (the response is read by Content-Length)."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TLS transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None or self._waiter.done():
            return
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                self.closed = True
        if len(self._buf) < end + 4 + length:
            return
        body = bytes(self._buf[end + 4 : end + 4 + length])
        del self._buf[: end + 4 + length]
        self._waiter.set_result((int(head[0].split()[1]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self._waiter

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class SimPeer(ControlClient):
    """A node's own ``ControlClient`` (its register, heartbeat and their messages) whose
    requests go over one kept-alive TLS connection written and read by :class:`Connection`
    instead of an aiohttp session: the same requests, headers and timeouts (connect 5 s,
    answer 15 s) as a node's, at a fraction of the client's CPU, so that one process can
    play thousands of nodes."""

    def __init__(self, url: str, ssl_ctx: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(server=url, **kwargs)
        host, _, port = url.removeprefix("https://").rpartition(":")
        self.host, self.port, self.ssl_ctx = host, int(port), ssl_ctx
        self.conn: Connection | None = None
        self.connects = 0

    async def _call(
        self,
        method: str,
        path: str,
        rtype: type[T] | None,
        *,
        token: str | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> T:
        token = self.session_token if token is None else token
        data = encode(body) if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        try:
            if self.conn is None or self.conn.closed:
                async with asyncio.timeout(5.0):
                    _, self.conn = await asyncio.get_running_loop().create_connection(
                        Connection,
                        self.host,
                        self.port,
                        ssl=self.ssl_ctx,
                        server_hostname=COORDINATOR_NAME,
                    )
                self.connects += 1
            async with asyncio.timeout(15.0 if timeout is None else timeout):
                status, raw = await self.conn.request(head.encode("latin-1") + data)
        except (OSError, TimeoutError) as exc:
            if self.conn is not None:
                self.conn.abort()
            raise CoordinatorUnreachable(f"cannot reach the coordinator: {exc!r}"[:80]) from None
        if status >= 400:
            raise _error_from(status, raw)
        if rtype is None:
            return None  # type: ignore[return-value]
        return msgspec.json.decode(raw, type=rtype)

    async def aclose(self) -> None:
        if self.conn is not None and self.conn.transport is not None and not self.conn.closed:
            self.conn.transport.close()
        await super().aclose()


async def _worker(
    url: str,
    count: int,
    index: int,
    duration: float,
    concurrency: int,
    push: int,
    sync: str,
    workers: int,
) -> dict[str, object]:
    ca = await fetch_ca(url, TOKEN)
    ssl_ctx = client_ssl_context(ca)  # one for the process (a node builds its own once)
    sem = asyncio.Semaphore(concurrency)
    reg_lat: list[float] = []
    reg_failed = 0
    kinds: dict[str, int] = {}
    hb_lat: list[tuple[float, float]] = []
    failed: list[float] = []  # when each failed heartbeat was sent
    peers: list[SimPeer] = []
    registered_all = asyncio.Event()
    stop_at = float("inf")

    def count_error(what: str) -> None:
        kinds[what[:80]] = kinds.get(what[:80], 0) + 1

    async def beat(p: SimPeer) -> None:
        # A node heartbeats at once after registering, then every interval, jittered, and
        # after an unanswered one within 2 s (ControlClient._heartbeat_loop).
        while time.monotonic() < stop_at:
            sent, t = time.time(), time.perf_counter()
            try:
                await p.heartbeat()
                hb_lat.append((sent, time.perf_counter() - t))
                wait = p.heartbeat_interval
            except (CoordinatorUnreachable, ApiRequestError) as exc:
                failed.append(sent)
                count_error(str(exc))
                unanswered = isinstance(exc, CoordinatorUnreachable)
                wait = min(p.heartbeat_interval, 2.0) if unanswered else p.heartbeat_interval
            wait *= 0.9 + 0.2 * random.random()
            if registered_all.is_set():
                wait = min(wait, max(stop_at - time.monotonic(), 0.0))
            await asyncio.sleep(wait)

    beats: list[asyncio.Task[None]] = []

    async def join(i: int) -> None:
        nonlocal reg_failed
        async with sem:
            t = time.perf_counter()
            p = SimPeer(
                url,
                ssl_ctx,
                identity=Identity.generate(),
                ca_pem=ca,
                auth_token=TOKEN,
                name=f"w{index}-peer-{i}",
            )
            try:
                await p.register_with_retry(attempts=5)  # as a joining node does
            except (CoordinatorUnreachable, ApiRequestError) as exc:
                reg_failed += 1
                count_error(f"registration: {exc}")
                await p.aclose()
                return
            finally:
                # One process plays thousands of nodes: the process-wide log redactor would
                # collect every one's key and tokens (sorted again at each addition), which a
                # node never does. Peers are made here, at most `concurrency` at a time.
                redactor.clear()
            reg_lat.append(time.perf_counter() - t)
        peers.append(p)
        beats.append(asyncio.create_task(beat(p)))

    stalls: list[tuple[float, float]] = []  # (when, seconds) this event loop was late by

    async def watch_loop() -> None:
        # A simulator whose own event loop stalls delays its peers' heartbeats: measured, so
        # that a slow client is not mistaken for a slow coordinator.
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            late = time.monotonic() - before - 0.1
            if late > 0.5:
                stalls.append((time.time(), late))

    watcher = asyncio.create_task(watch_loop())
    reg_start = time.time()
    await asyncio.gather(*(join(i) for i in range(count)))
    reg_end = time.time()
    # Every client process heartbeats until `duration` after the last one finished
    # registering, so all stop together (a process that stopped early would have its peers
    # go offline, pushed to the others' subscribers, while they measure one change's cost).
    (Path(sync) / f"registered.{index}").write_text(repr(reg_end))
    while len(ends := list(Path(sync).glob("registered.*"))) < workers:
        await asyncio.sleep(0.2)
    last_end = max(float(f.read_text()) for f in ends)
    stop_at = time.monotonic() + (last_end + duration - time.time())
    registered_all.set()

    # Push channels of the first `push` peers: the request a node's push loop makes, but the
    # frames are only counted (messages, and the bytes of every peer delta), not decoded into
    # a peer table: fifty 10,000-peer snapshots (4 MB each) decoded by one client process
    # stalled it for 10 s on a loaded machine, and with it its peers' heartbeats.
    heard: list[int] = []
    delta_bytes: list[int] = []
    push_http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=0))

    async def subscribe(p: SimPeer) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with push_http.ws_connect(
                url + "/api/v1/push",
                headers={"Authorization": f"Bearer {p.session_token}"},
                server_hostname=COORDINATOR_NAME,
                heartbeat=30.0,
                max_msg_size=0,
            ) as ws:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    lines = msg.data.split("\n")
                    heard.append(len(lines))
                    delta_bytes.extend(len(x) for x in lines if x.startswith('{"type":"peer"'))

    push_tasks = [asyncio.create_task(subscribe(p)) for p in peers[:push]]

    await asyncio.gather(*beats)
    hb_end = time.time()
    # One peer change: the last peer's endpoints change (its heartbeat carries them).
    if push and peers:
        await asyncio.sleep(2.0)  # what the heartbeats changed has been pushed
        delta_bytes.clear()
        changer = peers[-1]
        changer._endpoints = lambda: [f"198.51.100.{index + 1}:4{index:04d}"]
        try:
            await changer.heartbeat()
        except (
            CoordinatorUnreachable,
            ApiRequestError,
        ) as exc:  # counted like the other heartbeats; no figure then
            failed.append(time.time())
            count_error(f"the change: {exc}")
        # Pushed by every coordinator (PUSH_COALESCE, the change feed): until the count rests.
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 2.0:
            await asyncio.sleep(0.2)
            if len(delta_bytes) != last:
                last, quiet_since = len(delta_bytes), time.monotonic()
    watcher.cancel()
    for task in push_tasks:
        task.cancel()
    await asyncio.gather(*push_tasks, return_exceptions=True)
    await push_http.close()
    for p in peers:
        await p.aclose()
    return {
        "reg_start": reg_start,
        "reg_end": reg_end,
        "reg_lat": reg_lat,
        "hb_end": hb_end,
        "hb_lat": hb_lat,
        "failed": failed,
        "reg_failed": reg_failed,
        "connects": sum(p.connects for p in peers),
        "heard": sum(heard),
        "stalls": stalls,
        "kinds": kinds,
        "delta_bytes": delta_bytes,
    }


def worker(
    url: str,
    count: int,
    index: int,
    duration: float,
    concurrency: int,
    push: int,
    sync: str,
    workers: int,
) -> dict[str, object]:
    # On uvloop, as a node runs (tunnelmesh join): the cheapest client per simulated peer.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_worker(url, count, index, duration, concurrency, push, sync, workers))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not on Windows
        return None
    return uvloop.new_event_loop


def _running(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is not None:
            raise SystemExit(f"a coordinator exited ({p.returncode})")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else float("nan")


def print_cpu(
    sampler: CpuSampler, phase: str, start: float, end: float, count: int, what: str
) -> None:
    """What each process group and the whole machine used between ``start`` and ``end``, in
    all and per ``what`` (``count`` of them in that time)."""
    span, used, busy = sampler.report(start, end)
    if span <= 0:
        return
    rate = count / max(end - start, 1e-9)
    ncpu = os.cpu_count() or 1
    print(
        f"CPU in the {phase} ({span:.0f}s, {rate:.0f} {what}s/s): the machine was "
        f"{busy / span * 100:.0f}% busy of {ncpu * 100}%"
    )
    for group, secs in sorted(used.items()):
        print(
            f"  {group}: {secs / span * 100:.0f}% of a core, "
            f"{secs / max(rate * span, 1) * 1000:.2f} CPU ms per {what}"
        )
    print(f"  other processes of the machine: {(busy - sum(used.values())) / span * 100:.0f}%")


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


SUITE = ((2000, 1, False), (10000, 1, False), (10000, 2, True))
"""``--suite``: (peers, coordinators, PostgreSQL) of each run, the 2,000-peer anchor first."""

ANCHOR = (
    "anchor: 2,000 peers, 1 coordinator, SQLite, 2 client processes with 50 push channels "
    "each, 60 s of heartbeats, measured with this benchmark at 14a07d6 on 2 cores shared with "
    "other work (load average 14): 35 registrations/s, heartbeat p50 2.6 ms / p99 1,192 ms "
    "in the steady phase, 0 errors, RSS 212 MiB (peak 310), coordinator 0.36 CPU ms per "
    "heartbeat, 387 B per pushed delta. The same on a machine at load 2 to 4 with the "
    "previous simulator (ff1e397): 198 registrations/s, 1.3 / 5.4 ms, 174 MiB"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=30.0, help="heartbeat phase, seconds")
    ap.add_argument("--interval", type=float, default=10.0, help="heartbeat interval, seconds")
    ap.add_argument("--workers", type=int, default=2, help="client processes")
    ap.add_argument(
        "--concurrency", type=int, default=32, help="registrations in flight per worker"
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="the whole client part, seconds")
    ap.add_argument("--push", type=int, default=0, help="push channels per worker")
    ap.add_argument("--profile", default="", help="write a cProfile of the coordinator here")
    ap.add_argument(
        "--coordinators", type=int, default=1, help="coordinators (several need --postgres)"
    )
    ap.add_argument(
        "--postgres", action="store_true", help="state on a throwaway PostgreSQL cluster"
    )
    ap.add_argument(
        "--suite",
        action="store_true",
        help="one run each: 2,000 peers on 1 coordinator (SQLite), 10,000 on 1 (SQLite), "
        "10,000 on 2 (PostgreSQL); then their figures side by side",
    )
    args = ap.parse_args()
    # A SIGTERM unwinds like Ctrl-C: coordinators, client processes and the cluster are
    # stopped by the finally blocks below.
    signal.signal(signal.SIGTERM, _terminated)
    if args.coordinators > 1 and not args.postgres:
        ap.error("several coordinators share a database: add --postgres")
    if not args.suite:
        run_once(args)
        print(ANCHOR)
        return
    rows = []
    for peers, coordinators, postgres in SUITE:
        one = argparse.Namespace(**vars(args))
        one.peers, one.coordinators, one.postgres = peers, coordinators, postgres
        one.push = args.push or 50
        print(f"=== {peers} peers, {coordinators} coordinator(s), {_store(postgres)}", flush=True)
        rows.append(run_once(one))
        print(flush=True)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(row[k] for k in keys) + " |")
    print(ANCHOR)


def _store(postgres: bool) -> str:
    return "PostgreSQL (throwaway cluster)" if postgres else "SQLite"


def run_once(args: argparse.Namespace) -> dict[str, str]:
    """One bounded run as ``args`` say; prints its figures and returns the main ones."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp, contextlib.ExitStack() as stack:
        dsn = ""
        postmaster: Callable[[], int | None] = lambda: None  # noqa: E731
        if args.postgres:
            from tunnelmesh.testing.postgres import PostgresCluster, postgres_unavailable_reason

            reason = postgres_unavailable_reason()
            if reason is not None:
                raise SystemExit(f"--postgres: {reason}")
            cluster = stack.enter_context(PostgresCluster())  # started; closed (rm) after
            dsn = cluster.create_database("bench")
            postmaster = cluster.pid
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
            sampler = stack.enter_context(
                CpuSampler(lambda: run_groups([p.pid for p in procs], postmaster))
            )
            pool = ProcessPoolExecutor(args.workers)
            try:
                futures = [
                    pool.submit(
                        worker,
                        urls[i % len(urls)],
                        n,
                        i,
                        args.duration,
                        args.concurrency,
                        args.push,
                        tmp,
                        len(per),
                    )
                    for i, n in enumerate(per)
                ]
                deadline = time.monotonic() + args.timeout
                results = [f.result(timeout=deadline - time.monotonic()) for f in futures]
            except BaseException:
                # A failure, the time bound or Ctrl-C: the client processes end now, by PID.
                for child in multiprocessing.active_children():
                    if child.pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child.pid, signal.SIGKILL)
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            wall = time.time() - t0
            _running(procs)
            mems = [memory_kib(p.pid) for p in procs]
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
    reg_start = min(float(r["reg_start"]) for r in results)  # type: ignore[arg-type]
    reg_end = max(float(r["reg_end"]) for r in results)  # type: ignore[arg-type]
    reg_lat = [x for r in results for x in r["reg_lat"]]  # type: ignore[attr-defined]
    hb_all = [x for r in results for x in r["hb_lat"]]  # type: ignore[attr-defined]
    hb = [lat for _, lat in hb_all]
    failed = [x for r in results for x in r["failed"]]  # type: ignore[attr-defined]
    errors = len(failed)
    # Steady state: from one interval after the last registration to the end of the first
    # client's heartbeat phase.
    steady_from = reg_end + args.interval
    steady_to = min(float(r["hb_end"]) for r in results)  # type: ignore[arg-type]
    steady = [lat for sent, lat in hb_all if steady_from <= sent <= steady_to]
    steady_failed = sum(1 for sent in failed if steady_from <= sent <= steady_to)
    buckets: dict[int, list[int]] = {}
    for sent, _ in hb_all:
        buckets.setdefault(int((sent - reg_start) // 10), [0, 0])[0] += 1
    for sent in failed:
        buckets.setdefault(int((sent - reg_start) // 10), [0, 0])[1] += 1
    timeline = " ".join(f"{ok}/{bad}" for _, (ok, bad) in sorted(buckets.items()))
    connects = sum(int(r["connects"]) for r in results)  # type: ignore[call-overload]
    stalls = [x for r in results for x in r["stalls"]]  # type: ignore[attr-defined]
    reg_failed = sum(int(r["reg_failed"]) for r in results)  # type: ignore[call-overload]
    print(
        f"machine: {os.cpu_count()} cores, load average before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f}"
    )
    store = _store(args.postgres)
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
        f"p99 {pct(hb, 99) * 1000:.1f} ms, max {max(hb) * 1000:.1f} ms; "
        f"{connects} TLS connections opened for them ({len(reg_lat)} peers)"
    )
    if steady:
        print(
            f"heartbeats, steady state ({len(steady)} answered, {steady_failed} failed in "
            f"{steady_to - steady_from:.0f}s from one interval after the last registration): "
            f"p50 {statistics.median(steady) * 1000:.1f} ms, "
            f"p99 {pct(steady, 99) * 1000:.1f} ms, max {max(steady) * 1000:.1f} ms"
        )
    print(f"heartbeats answered/failed per 10 s from the first registration: {timeline}")
    print(
        f"client event loops late by more than 0.5 s: {len(stalls)} times, "
        f"{sum(late for _, late in stalls):.1f}s in all, at most "
        f"{max((late for _, late in stalls), default=0.0):.1f}s"
        + (
            " (at "
            + ", ".join(f"+{when - reg_start:.0f}s {late:.1f}s" for when, late in stalls[:8])
            + ")"
            if stalls
            else ""
        )
    )
    for i, mem in enumerate(mems):
        print(
            f"coordinator {i} memory: RSS {mem['VmRSS'] / 1024:.1f} MiB, "
            f"peak {mem['VmHWM'] / 1024:.1f} MiB"
        )
    # Who used the cores: while peers registered, and in the steady heartbeat phase.
    print_cpu(sampler, "registration phase", reg_start, reg_end, len(reg_lat), "registration")
    in_window = len(steady) + steady_failed
    print_cpu(sampler, "steady heartbeat phase", steady_from, steady_to, in_window, "heartbeat")
    for r in results:
        for k, v in r["kinds"].items():  # type: ignore[attr-defined]
            print(f"  error x{v}: {k}")
    per_change = "-"
    if args.push:
        heard = sum(int(r["heard"]) for r in results)  # type: ignore[call-overload]
        print(f"push channels: {args.push * args.workers}, push messages received: {heard}")
        sizes = [x for r in results for x in r["delta_bytes"]]  # type: ignore[attr-defined]
        changes = len(per)  # one endpoint change per worker
        if sizes:
            # Each worker changes one peer after the common end of the heartbeat phase and
            # listens until the deltas rest.
            mean = statistics.mean(sizes)
            print(
                f"push cost of a peer change: {len(sizes)} deltas received by "
                f"{args.push * args.workers} subscribers for {changes} changes (one per "
                f"worker), {mean:.0f} bytes each (max {max(sizes)}): with "
                f"all {args.peers} peers subscribed, one change is {args.peers} messages, "
                f"{mean * args.peers / 1024:.0f} KiB"
            )
            per_change = f"{mean:.0f} B x {args.peers} = {mean * args.peers / 1024:.0f} KiB"
    _, used, _ = sampler.report(steady_from, steady_to)
    coord_cpu = sum(v for k, v in used.items() if k.startswith("coordinator"))
    return {
        "run": f"{args.peers} peers, {len(urls)} coordinator(s), {_store(args.postgres)}",
        "load average": f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}",
        "registrations/s": f"{len(reg_lat) / (reg_end - reg_start):.0f} ({reg_failed} failed)",
        "heartbeat p50 / p99 (steady)": (
            f"{statistics.median(steady) * 1000:.1f} / {pct(steady, 99) * 1000:.1f} ms"
            if steady
            else "-"
        ),
        "heartbeat errors (steady, all)": f"{steady_failed} of {in_window}, {errors} of "
        f"{len(hb) + errors}",
        "RSS per coordinator": ", ".join(f"{m['VmRSS'] / 1024:.0f} MiB" for m in mems),
        "coordinator CPU per heartbeat": f"{coord_cpu / max(in_window, 1) * 1000:.2f} ms",
        "bytes pushed per peer change": per_change,
    }


if __name__ == "__main__":
    main()
