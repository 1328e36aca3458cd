"""S3 throughput beside the raw speed of the same disk, in one bounded run.

    uv run python tunnelmesh_s3/bench/bench_s3.py [--dir DIR] [--quick] [--rounds N]

Starts ``tunnelmesh s3 serve`` as a subprocess on 127.0.0.1 (port 0) with its data in DIR, and
measures from this process with a light aiohttp client (SigV4 headers, ``UNSIGNED-PAYLOAD``
bodies, so the client spends little CPU):

* PUT and GET throughput of 1 MiB objects (16 in flight) and 256 MiB objects (one at a time);
* small-object (4 KiB) PUT and GET operations per second with 16 parallel clients;
* the same directory's raw speed: write+fsync and read of the same sizes, with 16 threads for
  the small files;
* nginx beside it when ``nginx`` is installed (``--nginx PATH`` to name it, ``--no-nginx`` to
  skip): the same client and workloads, PUT to its WebDAV module (``dav_methods PUT``) and GET as
  static files (``sendfile on``), started on 127.0.0.1 in the same directory and stopped by PID.

Both servers run side by side, and every workload runs ``--rounds`` times (3), S3 and nginx in
turn; each figure printed is the best of its rounds, so that a round slowed by other processes on
the machine counts against neither. Reads on both sides come from the page cache when the data
fits in memory (nothing drops caches). Every loop is bounded by a count; each round writes about
1.5 GiB (0.3 with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

from tunnelmesh_s3 import sigv4

AK, SK = "AKBENCH", "bench-secret"
MiB = 1024 * 1024


# --- raw disk ------------------------------------------------------------------------------------


def raw_write(path: Path, data: bytes, chunk: int = MiB) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        for i in range(0, len(data), chunk):
            os.write(fd, view[i : i + chunk])
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_read(path: Path, chunk: int = MiB) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while data := f.read(chunk):
            n += len(data)
    return n


def raw_bench(root: Path, size: int, count: int, threads: int) -> tuple[float, float]:
    """(write, read) seconds for ``count`` files of ``size`` bytes with ``threads`` workers."""
    root.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    paths = [root / f"f{i}" for i in range(count)]
    with ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        list(pool.map(lambda p: raw_write(p, data), paths))
        w = time.perf_counter() - t
        t = time.perf_counter()
        list(pool.map(raw_read, paths))
        r = time.perf_counter() - t
    shutil.rmtree(root)
    return w, r


# --- S3 ------------------------------------------------------------------------------------------


class Client:
    def __init__(self, session: aiohttp.ClientSession, port: int, sign: bool = True) -> None:
        self.session, self.port, self.sign = session, port, sign

    def _headers(self, method: str, path: str) -> dict[str, str]:
        if not self.sign:
            return {}
        headers = {"host": f"127.0.0.1:{self.port}"}
        sigv4.sign_headers(
            method, path, "", headers, access_key=AK, secret=SK, region="us-east-1", now=time.time()
        )
        del headers["host"]
        return headers

    async def put(self, path: str, data: bytes) -> None:
        async with self.session.put(
            f"http://127.0.0.1:{self.port}{path}", data=data, headers=self._headers("PUT", path)
        ) as r:
            await r.read()
            assert r.status in (200, 201, 204), (r.status, await r.text())

    async def get(self, path: str) -> int:
        n = 0
        async with self.session.get(
            f"http://127.0.0.1:{self.port}{path}", headers=self._headers("GET", path)
        ) as r:
            assert r.status == 200, r.status
            async for chunk in r.content.iter_chunked(MiB):
                n += len(chunk)
        return n


async def run_parallel(n: int, parallel: int, op: Callable[[int], Awaitable[object]]) -> float:
    sem = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with sem:
            await op(i)

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t


async def s3_bench(
    port: int, quick: bool, sign: bool = True
) -> dict[str, tuple[float, float, str]]:
    """The workloads against the server on ``port`` (``sign``: S3; else plain HTTP, nginx)."""
    results: dict[str, tuple[float, float, str]] = {}
    conn = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=conn) as session:
        c = Client(session, port, sign)
        if sign:
            async with session.put(
                f"http://127.0.0.1:{port}/bench", headers=c._headers("PUT", "/bench")
            ) as r:
                assert r.status in (200, 409), r.status
        plans = [
            ("1 MiB x16", MiB, 32 if quick else 128, 16),
            ("256 MiB x1", 256 * MiB, 1 if quick else 2, 1),
        ]
        for label, size, count, parallel in plans:
            data = os.urandom(size)
            w = await run_parallel(
                count, parallel, lambda i, s=size, d=data: c.put(f"/bench/o{s}-{i}", d)
            )
            r = await run_parallel(count, parallel, lambda i, s=size: c.get(f"/bench/o{s}-{i}"))
            mb = size * count / MiB
            results[label] = (mb / w, mb / r, "MiB/s")
        small = os.urandom(4096)
        count = 500 if quick else 2000
        w = await run_parallel(count, 16, lambda i: c.put(f"/bench/s{i}", small))
        r = await run_parallel(count, 16, lambda i: c.get(f"/bench/s{i}"))
        results["4 KiB x16"] = (count / w, count / r, "ops/s")
    return results


NGINX_CONF = """\
user {user} {group};
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_max_body_size 0;
    client_body_temp_path {base}/body;
    proxy_temp_path {base}/proxy;
    fastcgi_temp_path {base}/fastcgi;
    uwsgi_temp_path {base}/uwsgi;
    scgi_temp_path {base}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {base}/root;
        location / {{ dav_methods PUT; create_full_put_path on; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def nginx_server(nginx: str, base: Path) -> Iterator[int]:
    """nginx (one worker) serving ``base`` on 127.0.0.1: its port; stopped by PID at the end."""
    (base / "root" / "bench").mkdir(parents=True)
    port = free_port()
    conf = base / "nginx.conf"
    # workers as this process's user (else root's nginx runs them as nobody, who cannot write)
    user, group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
    conf.write_text(NGINX_CONF.format(base=base, port=port, user=user, group=group))
    proc = subprocess.Popen(
        [nginx, "-e", str(base / "error.log"), "-c", str(conf), "-g", "daemon off;"],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start (see {base}/error.log)") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def s3_server(data_dir: Path) -> Iterator[int]:
    """``tunnelmesh s3 serve`` on 127.0.0.1 with its data in ``data_dir``: its port; stopped by
    PID at the end."""
    env = dict(os.environ, TUNNELMESH_S3_ACCESS_KEY=AK, TUNNELMESH_S3_SECRET_KEY=SK)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunnelmesh",
            "-l",
            "warning",
            "s3",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        m = re.search(r":(\d+) ", proc.stdout.readline())
        assert m, "server did not start"
        yield int(m.group(1))
    finally:
        proc.terminate()
        proc.wait(30)


Results = dict[str, tuple[float, float, str]]


def _best(best: Results, new: Results) -> None:
    """Keep each workload's best PUT and best GET figure (a round slowed by other processes on
    the machine does not count against either server)."""
    for label, (put, get, unit) in new.items():
        old_put, old_get, _ = best.get(label, (0.0, 0.0, unit))
        best[label] = (max(put, old_put), max(get, old_get), unit)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, help="directory to measure (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="smaller counts (for CI smoke runs)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, S3 and nginx in turn")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="nginx")
    ap.add_argument("--no-nginx", action="store_true", help="leave nginx out")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tm-s3-bench-", dir=args.dir))
    try:
        quick = args.quick
        raw = {
            "1 MiB x16": raw_bench(base / "raw1", MiB, 32 if quick else 128, 16),
            "256 MiB x1": raw_bench(base / "raw256", 256 * MiB, 1 if quick else 2, 1),
            "4 KiB x16": raw_bench(base / "raw4k", 4096, 500 if quick else 2000, 16),
        }
        s3: Results = {}
        nginx: Results = {}
        with_nginx = not args.no_nginx and os.access(args.nginx, os.X_OK)
        with contextlib.ExitStack() as stack:
            s3_port = stack.enter_context(s3_server(base / "s3"))
            nginx_port = (
                stack.enter_context(nginx_server(args.nginx, base / "nginx")) if with_nginx else 0
            )
            for _ in range(max(args.rounds, 1)):
                _best(s3, asyncio.run(s3_bench(s3_port, quick)))
                if with_nginx:
                    _best(nginx, asyncio.run(s3_bench(nginx_port, quick, sign=False)))
        counts = {
            "1 MiB x16": 32 if quick else 128,
            "256 MiB x1": 1 if quick else 2,
            "4 KiB x16": 500 if quick else 2000,
        }
        sizes = {"1 MiB x16": 1, "256 MiB x1": 256, "4 KiB x16": None}
        print(
            f"S3 (tunnelmesh s3 serve, filesystem backend) vs raw disk, dir {base}, {os.cpu_count()} CPUs,"
            f" load {os.getloadavg()[0]:.1f}, best of {max(args.rounds, 1)} rounds"
            + (" (S3 and nginx in turn)" if with_nginx else "")
        )
        print(
            f"{'workload':<12} {'S3 PUT':>10} {'nginx PUT':>10} {'raw write':>10}"
            f" {'S3 GET':>10} {'nginx GET':>10} {'raw read':>10}  unit"
        )
        for label, (put, get, unit) in s3.items():
            w, r = raw[label]
            n = counts[label]
            size = sizes[label]
            rw = n * size / w if size else n / w
            rr = n * size / r if size else n / r
            nput, nget = (
                (f"{v:>10.1f}" for v in nginx[label][:2]) if nginx else ("-".rjust(10),) * 2
            )
            print(
                f"{label:<12} {put:>10.1f} {nput} {rw:>10.1f} {get:>10.1f} {nget} {rr:>10.1f}  {unit}"
            )
        if not nginx:
            print("(nginx: not measured)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
