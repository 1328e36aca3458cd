#!/usr/bin/env python3
"""Benchmark: tunnelmesh proxy beside nginx as the same header-routed proxy, in one run.

    uv run python tunnelmesh_proxy/bench/bench_proxy.py [--duration 5] [--connections 64]
        [--threads 2] [--workers 2] [--rounds 2] [--idle 1000] [--json PATH]

Everything stays on 127.0.0.1 and is bounded in time. One nginx master serves
  * the upstream: a 64-byte static file (keep-alive, like the anchor script
    /work/shared/tools/anchors/nginx-proxy-anchor.sh),
  * the anchor proxy: ``map $http_x_cmux_port_internal`` to a named upstream with a keepalive
    pool (the anchor's "proxy B"), ``worker_processes`` = --workers.
``tunnelmesh proxy --workers N`` runs beside it. wrk with keep-alive and the same parameters
loads each proxy in turn (ABAB... for --rounds), after a short warm-up of each. The table shows
requests/s, p50 and p99 latency of the best round of each and the ratios (ours / nginx), the
system load and the CPU that other processes took during the runs.

Then the memory: RSS of each proxy (all its processes) before and after --idle keep-alive
connections that each made one request and then stay idle.

Needs the Debian packages wrk and nginx. Exit status 0 when both proxies answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"

NGINX_CONF = """\
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp;
  fastcgi_temp_path {work}/tmp; uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server {{ listen 127.0.0.1:{upstream}; root {work}/www; location / {{ index index.html; }} }}
  upstream up{upstream} {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  map $http_x_cmux_port_internal $cmux_up {{ default ""; {upstream} up{upstream}; }}
  server {{
    listen 127.0.0.1:{proxy};
    location / {{
      if ($cmux_up = "") {{ return 400; }}
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://$cmux_up;
    }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def tree(pid: int) -> list[int]:
    """The process and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) summed over the processes; PSS shares pages common to forked workers."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total


def system_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values), values[3] + values[4]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text: str) -> dict[str, float]:
    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock_err = re.search(r"Socket errors: (.+)", text)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": latency("50%"),
        "p99_ms": latency("99%"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if sock_err else 0.0,
    }


def run_wrk(
    args: argparse.Namespace, port: int, upstream: int, duration: float, ours: list[int]
) -> dict[str, float]:
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration:g}s",
        "--latency",
        "-H",
        f"X-Cmux-Port-Internal: {upstream}",
        f"http://127.0.0.1:{port}/",
    ]
    total0, idle0 = system_ticks()
    mine0 = cpu_ticks(ours)
    children0 = os.times()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True)
    children1 = os.times()
    total1, idle1 = system_ticks()
    mine1 = cpu_ticks(ours)
    wrk_seconds = (children1.children_user + children1.children_system) - (
        children0.children_user + children0.children_system
    )
    mine1 += round(wrk_seconds * os.sysconf("SC_CLK_TCK"))
    result = parse_wrk(proc.stdout)
    ncpu = os.cpu_count() or 1
    span = max(total1 - total0, 1)
    result["busy_pct"] = 100.0 * ncpu * (1 - (idle1 - idle0) / span)  # 100 = one core
    # wrk, the proxies and the nginx upstream are ours; the rest is other work on the machine
    result["ours_pct"] = 100.0 * ncpu * (mine1 - mine0) / span
    result["foreign_pct"] = max(result["busy_pct"] - result["ours_pct"], 0.0)
    return result


async def idle_connections(port: int, upstream: int, count: int) -> list[asyncio.StreamWriter]:
    """``count`` keep-alive connections that made one request each and now stay idle."""
    writers = []
    request = f"GET / HTTP/1.1\r\nHost: bench\r\nX-Cmux-Port-Internal: {upstream}\r\n\r\n".encode()
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        writers.append(writer)
    return writers


def measure_memory(
    port: int, upstream: int, pids_of: Callable[[], list[int]], count: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    async def main() -> tuple[tuple[int, int], tuple[int, int]]:
        before = memory_kib(pids_of())
        writers = await idle_connections(port, upstream, count)
        await asyncio.sleep(1.0)
        after = memory_kib(pids_of())
        for writer in writers:
            writer.close()
        return before, after

    return asyncio.run(main())


@contextlib.contextmanager
def started(cmd: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if cmd[0] != "nginx" else signal.SIGQUIT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="both proxies")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--idle", type=int, default=1000, help="idle connections for the RSS figure"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"bench_proxy: needs {tool} (apt-get install wrk nginx)", file=sys.stderr)
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4 * args.idle + 256), hard), hard))

    upstream, nginx_port, our_port = free_port(), free_port(), free_port()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tm-proxy-bench-") as tmp:
        work = Path(tmp)
        (work / "www").mkdir()
        (work / "tmp").mkdir()
        os.chmod(work, 0o755)
        os.chmod(work / "www", 0o755)
        (work / "www" / "index.html").write_bytes(b"x" * 63 + b"\n")
        conf = work / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(work=work, workers=args.workers, upstream=upstream, proxy=nginx_port)
        )
        ours_cmd = [
            sys.executable,
            "-c",
            MAIN,
            "proxy",
            "--listen",
            f"127.0.0.1:{our_port}",
            "--workers",
            str(args.workers),
            "--pool-size",
            "128",
        ]
        with (
            started(["nginx", "-c", str(conf), "-g", "daemon off;"]) as nginx,
            started(ours_cmd, stdout=subprocess.DEVNULL) as ours,
        ):
            wait_port(upstream)
            wait_port(nginx_port)
            wait_port(our_port)
            targets = {
                "tunnelmesh": (our_port, lambda: tree(ours.pid)),
                "nginx": (nginx_port, lambda: tree(nginx.pid)),
            }
            for name, (port, _) in targets.items():  # warm-up, also checks the routing works
                warm = run_wrk(args, port, upstream, 1.0, [])
                if warm["rps"] <= 0 or warm["non2xx"]:
                    print(f"bench_proxy: {name} does not answer 200: {warm}", file=sys.stderr)
                    return 1
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (port, _) in targets.items():
                    ours_pids = tree(ours.pid) + tree(nginx.pid)
                    rounds[name].append(run_wrk(args, port, upstream, args.duration, ours_pids))
            memory = {
                name: measure_memory(port, upstream, pids, args.idle)
                for name, (port, pids) in targets.items()
            }
    load_after = os.getloadavg()

    best = {name: max(rs, key=lambda r: r["rps"]) for name, rs in rounds.items()}
    t, n = best["tunnelmesh"], best["nginx"]
    print(
        f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration:g}s keep-alive, 64 B upstream (nginx), "
        f"{args.workers} worker(s) each, {os.cpu_count()} cores, best of {args.rounds} round(s)\n"
    )
    print(f"{'proxy':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'others %CPU':>13}")
    for name, r in best.items():
        print(
            f"{name:<12}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['non2xx']:>9.0f}{r['foreign_pct']:>13.0f}"
        )
    print(
        f"{'ratio':<12}{t['rps'] / n['rps']:>10.2f}{t['p50_ms'] / n['p50_ms']:>9.2f}{t['p99_ms'] / n['p99_ms']:>9.2f}"
        "   (tunnelmesh / nginx; target req/s >= 0.50, p99 <= 2.00)"
    )
    print(
        "\nall rounds (req/s):",
        {name: [round(r["rps"]) for r in rs] for name, rs in rounds.items()},
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"\nMemory with {args.idle} idle keep-alive connections (all processes of each proxy):")
    for name, ((rss0, pss0), (rss1, pss1)) in memory.items():
        per = (pss1 - pss0) / max(args.idle, 1)
        print(
            f"  {name:<12} RSS {rss0 / 1024:6.1f} -> {rss1 / 1024:6.1f} MiB, PSS {pss0 / 1024:6.1f} -> "
            f"{pss1 / 1024:6.1f} MiB  ({per:.1f} KiB per connection)"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "rounds": rounds,
                    "best": best,
                    "memory_kib": memory,
                    "load": [load_before, load_after],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
