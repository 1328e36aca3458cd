"""Throughput and latency: raw veth vs wireguard-go vs tunnelmesh UDP, in one lab and one run.

    sudo .venv/bin/python tunnelmesh_udp/bench/bench.py [--seconds 5] [--rounds N] [--skip-baselines]
        [--only TSO --only coalescing]

Two lab namespaces on one switch; between them, in turn: the raw link, a wireguard-go tunnel
(Debian's wireguard-go + wg) and tunnelmesh UDP nodes (static configuration), with and without
UDP GSO/GRO. Each path gets ``ping`` (20 x 0.05 s) and one iperf3 TCP run. Tunnel MTU 1420, so
every WireGuard datagram is at most 1420 + 32 + 8 + 20 = 1480 bytes: no IP fragmentation on a
1500-byte path (checked: the link's fragment counters stay at zero). Bounded: a few runs of
``--seconds`` each. Prints one line per path and the ratio tunnelmesh / wireguard-go.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tunnelmesh.testing.lab import Lab
from tunnelmesh_udp.labtools import KeyPair, start_static_node, start_wireguard_go, stop_process


def ping_ms(host: Any, address: str) -> float:
    out = host.run(["ping", "-n", "-q", "-c", "20", "-i", "0.05", address], timeout=30).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(m.group(1)) if m else float("nan")


def iperf_gbps(client: Any, server: Any, address: str, seconds: int) -> float:
    srv = server.popen(  # stopped below if still there: its "interrupt" line is no result
        ["iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            if ":5201" in server.run(["ss", "-ltn"], check=False).stdout:
                break
            server.run(["sleep", "0.1"])
        out = client.run(
            ["iperf3", "-J", "-c", address, "-t", str(seconds)], timeout=seconds + 30, check=False
        ).stdout
    finally:
        stop_process(srv)
    result = json.loads(out)
    if "error" in result:  # e.g. a connect timeout on a loaded machine: one figure lost, not all
        print(f"iperf3 to {address}: {result['error']}", flush=True)
        return float("nan")
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


def frag_count(host: Any) -> int:
    out = host.run(["cat", "/proc/net/snmp"]).stdout
    lines = [line.split() for line in out.splitlines() if line.startswith("Ip:")]
    fields = dict(zip(lines[0][1:], lines[1][1:], strict=True))
    return int(fields["FragCreates"]) + int(fields["ReasmReqds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the tunnelmesh paths, interleaved (<= 5)"
    )
    parser.add_argument(
        "--skip-baselines", action="store_true", help="no raw veth / wireguard-go runs"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="tunnelmesh paths whose label has this"
    )
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 5))
    results: list[tuple[str, float, float]] = []
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        a, b = lab.add_host("ba"), lab.add_host("bb")
        if not args.skip_baselines:
            baselines(a, b, work, args.seconds, results)
        for _ in range(rounds):
            tunnelmesh_paths(a, b, work, args.seconds, results, args.only)
    report(results)


def baselines(a: Any, b: Any, work: Path, seconds: int, results: list[Any]) -> None:
    """The raw link and a wireguard-go tunnel."""
    results.append(("raw veth", iperf_gbps(a, b, b.address, seconds), ping_ms(a, b.address)))

    ka, kb = KeyPair(), KeyPair()
    tag = secrets.token_hex(3)
    procs = [
        start_wireguard_go(
            host, work, ifname=f"wgb{tag}{n}", key=key, address=f"10.202.0.{i}/24",
            listen_port=51820, peer_public_b64=other.public_b64,
            allowed_ips=f"10.202.0.{3 - i}/32", endpoint=f"{peer.address}:51820",
        )
        for n, i, host, key, other, peer in (("a", 1, a, ka, kb, b), ("b", 2, b, kb, ka, a))
    ]  # fmt: skip
    a.ping("10.202.0.2", count=2, timeout=2)
    results.append(
        ("wireguard-go", iperf_gbps(a, b, "10.202.0.2", seconds), ping_ms(a, "10.202.0.2"))
    )
    for p in procs:
        stop_process(p)


def tunnelmesh_paths(
    a: Any, b: Any, work: Path, seconds: int, results: list[Any], only: list[str]
) -> None:
    """tunnelmesh nodes with each offload step switched on in turn."""
    ka, kb = KeyPair(), KeyPair()
    for label, extra in (
        ("tunnelmesh (plain)", {"gso": False, "gro": False, "tun_coalesce": False}),
        ("tunnelmesh (+UDP GSO/GRO)", {"gso": True, "gro": True, "tun_coalesce": False}),
        ("tunnelmesh (+TUN coalescing)", {"gso": True, "gro": True, "tun_coalesce": True}),
        ("tunnelmesh (+TUN TSO send)", {"gso": True, "gro": True, "tun_tso": True}),
    ):
        if only and not any(o in label for o in only):
            continue
        nodes = [
            start_static_node(
                host, work, name=f"tm{n}", key=key, address=f"10.203.0.{i}/24",
                listen_port=51821,
                peers=[{"name": "x", "public_key": other.public_b64,
                        "endpoint": f"{peer.address}:51821",
                        "allowed_ips": [f"10.203.0.{3 - i}/32"]}],
                extra=extra,
            )
            for n, i, host, key, other, peer in (("a", 1, a, ka, kb, b), ("b", 2, b, kb, ka, a))
        ]  # fmt: skip
        a.ping("10.203.0.2", count=2, timeout=2)
        frags = frag_count(a) + frag_count(b)
        gbps = iperf_gbps(a, b, "10.203.0.2", seconds)
        rtt = ping_ms(a, "10.203.0.2")
        assert frag_count(a) + frag_count(b) == frags, "tunnel datagrams were fragmented"
        results.append((label, gbps, rtt))
        for node in nodes:
            stop_process(node)


def report(results: list[tuple[str, float, float]]) -> None:
    load = os.getloadavg()
    print(f"# {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'path':28} {'TCP Gbit/s':>10} {'ping ms':>8}")
    for label, gbps, rtt in results:
        print(f"{label:28} {gbps:10.3f} {rtt:8.3f}")
    by_path: dict[str, list[float]] = {}
    for label, gbps, _ in results:
        by_path.setdefault(label, []).append(gbps)
    medians = {k: statistics.median(v) for k, v in by_path.items()}
    if len(results) > len(medians):
        for label, values in by_path.items():
            print(f"median {label:28} {medians[label]:.3f} over {len(values)}")
    wg = medians.get("wireguard-go")
    for label, gbps in medians.items():
        if wg and label.startswith("tunnelmesh"):
            print(f"ratio {label} / wireguard-go: {gbps / wg:.2f}")


if __name__ == "__main__":
    main()
