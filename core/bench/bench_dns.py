"""Mesh resolver queries per second, beside dnsmasq serving the same records, in one run.

Run: ``uv run python core/bench/bench_dns.py`` (or ``nox -s bench -- dns``). Both servers
listen on 127.0.0.1 only; the load is bounded (``--seconds`` per server, default 5). The load
generator is ``dnsperf`` (Debian ``dnsperf``) when installed, else a bounded asyncio script;
dnsmasq comes from Debian ``dnsmasq-base`` and runs in the foreground with explicit flags (no
system service, no config file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from dnslib import DNSRecord

N_RECORDS = 200


def records() -> dict[str, str]:
    return {f"peer{i}": f"10.42.{i // 250}.{i % 250 + 2}" for i in range(N_RECORDS)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_answer(port: int, timeout: float = 15.0) -> None:
    query = DNSRecord.question("peer1.tunnelmesh").pack()
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(query, ("127.0.0.1", port))
            try:
                if DNSRecord.parse(s.recv(512)).rr:
                    return
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.1)
    raise SystemExit(f"no answer on port {port}")


def start_ours(recs: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "tunnelmesh", "-l", "warning", "dns", "serve"]
    cmd += [f"--listen=127.0.0.1:{port}", "--upstream=127.0.0.1:9"]
    cmd += [f"--record={n}={ip}" for n, ip in recs.items()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    wait_answer(port)
    return proc, port


def start_dnsmasq(recs: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--pid-file=",
        "--local=/tunnelmesh/",
    ]
    if os.geteuid() == 0:
        cmd.append("--user=root")
    cmd += [f"--host-record={n}.tunnelmesh,{ip}" for n, ip in recs.items()]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    wait_answer(port)
    return proc, port


def run_dnsperf(port: int, qfile: str, seconds: float, clients: int) -> float:
    out = subprocess.run(
        [
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            qfile,
            "-l",
            str(seconds),
            "-c",
            str(clients),
            "-t",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if m is None:
        raise SystemExit(f"cannot read dnsperf output:\n{out}")
    if lost and int(lost.group(1)):
        print(f"  (port {port}: {lost.group(1)} queries lost)")
    return float(m.group(1))


async def _script_load(port: int, names: list[str], seconds: float, window: int) -> float:
    """Bounded closed-loop load: ``window`` queries in flight, for ``seconds``."""
    loop = asyncio.get_running_loop()
    done = 0
    inflight = 0
    wake = asyncio.Event()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            nonlocal done, inflight
            done += 1
            inflight -= 1
            wake.set()

    transport, _ = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", port))
    queries = [DNSRecord.question(f"{n}.tunnelmesh").pack() for n in names]
    start = time.monotonic()
    end = start + seconds
    i = 0
    while time.monotonic() < end:
        while inflight < window:
            transport.sendto(queries[i % len(queries)])
            i += 1
            inflight += 1
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), 1.0)
        except TimeoutError:
            inflight = 0  # lost queries: refill the window
    elapsed = time.monotonic() - start
    transport.close()
    return done / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    if shutil.which("dnsmasq") is None:
        print("bench_dns: dnsmasq not installed (apt-get install dnsmasq-base); skipped")
        return 0
    recs = records()
    tool = "dnsperf" if shutil.which("dnsperf") else "script"
    results: dict[str, float] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as qf:
        for n in recs:
            qf.write(f"{n}.tunnelmesh A\n")
    try:
        for label, start in (("tunnelmesh", start_ours), ("dnsmasq", start_dnsmasq)):
            proc, port = start(recs)
            try:
                if tool == "dnsperf":
                    qps = run_dnsperf(port, qf.name, args.seconds, args.clients)
                else:
                    qps = asyncio.run(_script_load(port, list(recs), args.seconds, 32))
                results[label] = qps
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        os.unlink(qf.name)
    load = os.getloadavg()[0]
    print(f"\nDNS A queries/s over loopback ({N_RECORDS} records, {tool}, {args.seconds:g} s each,")
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs)")
    for label, qps in results.items():
        print(f"  {label:<12} {qps:>10.0f} qps")
    print(f"  ratio        {results['tunnelmesh'] / results['dnsmasq']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
