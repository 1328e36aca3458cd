"""Throughput and latency of a phone through the concentrator, beside wireguard-go direct.

    sudo .venv/bin/python tunnelmesh_wg/bench/bench_concentrator.py [--seconds 5]

One lab, one run: a coordinator and two joined peers, ``conc`` (the WireGuard concentrator)
and ``beta``; "the phone" is Debian's wireguard-go in its own namespace, configured from what
``tunnelmesh wg add`` prints. Measured, each with ``ping`` (20 x 0.05 s) and one iperf3 TCP
run of ``--seconds``:

* phone -> beta through the concentrator (phone's wireguard-go -> the concentrator's engine
  -> relayed onto the UDP transport -> beta): two WireGuard hops, the path a phone uses;
* phone -> conc (the concentrator itself, one hop);
* the anchor: wireguard-go -> wireguard-go direct between the phone's and beta's namespaces
  (one hop, both ends the Go implementation).

Prints one line per path and the ratio to the anchor. Bounded: three iperf3 runs.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tunnelmesh.testing.lab import Lab
from tunnelmesh.testing.mesh import MeshLab
from tunnelmesh.testing.wireguard import KeyPair, start_wireguard_go, stop_process
from tunnelmesh_wg.labtools import start_phone


def ping_ms(host: Any, address: str) -> float:
    out = host.run(
        ["ping", "-n", "-q", "-c", "20", "-i", "0.05", address], timeout=30, check=False
    ).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(m.group(1)) if m else float("nan")


def iperf_gbps(client: Any, server: Any, address: str, seconds: int) -> float:
    srv = server.popen(["iperf3", "-s", "-1", "-B", address], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if f"{address}:5201" in server.run(["ss", "-ltnH"], check=False).stdout:
                break
            server.run(["sleep", "0.1"])
        out = client.run(
            ["iperf3", "-J", "-c", address, "-t", str(seconds)], timeout=seconds + 30
        ).stdout
    finally:
        stop_process(srv)
    bits = json.loads(out)["end"]["sum_received"]["bits_per_second"]
    return float(bits) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    seconds = max(1, min(args.seconds, 30))
    results: list[tuple[str, float, float]] = []
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mesh = MeshLab(lab, work)
        phone = None
        procs: list[subprocess.Popen[str]] = []
        try:
            conc = mesh.add_peer("conc")
            beta = mesh.add_peer("beta")
            with (conc.home / "peer.yaml").open("a") as f:
                f.write(
                    "wireguard:\n  enabled: true\n  listen_port: 51820\n"
                    f'  endpoint: "{conc.host.address}:51820"\n'
                )
            mesh.start_coordinator()
            mesh.start_peer("conc")  # the first peer: the admin
            mesh.start_peer("beta")
            mesh.wait_links(timeout=30)
            config = conc.host.run(
                [sys.executable, "-m", "tunnelmesh", "wg", "add", "phone"],
                env=mesh.env(conc.home),
                timeout=60,
            ).stdout
            host = lab.add_host("phone")
            phone = start_phone(host, work, ifname="tmph" + secrets.token_hex(4), config=config)
            for target in (beta.mesh_ip, conc.mesh_ip):  # handshake and warm-up
                host.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", target], check=False)
            for label, target, server in (
                ("phone -> beta through the concentrator", beta.mesh_ip, beta.host),
                ("phone -> conc (the concentrator itself)", conc.mesh_ip, conc.host),
            ):
                results.append(
                    (label, ping_ms(host, target), iperf_gbps(host, server, target, seconds))
                )
            # the anchor: wireguard-go to wireguard-go between the same two namespaces
            k1, k2 = KeyPair(), KeyPair()
            if1, if2 = "tmga" + secrets.token_hex(4), "tmgb" + secrets.token_hex(4)
            procs.append(
                start_wireguard_go(
                    host, work, ifname=if1, key=k1, address="10.209.0.1/24", listen_port=51900,
                    peer_public_b64=k2.public_b64, allowed_ips="10.209.0.2/32",
                    endpoint=f"{beta.host.address}:51900",
                )
            )  # fmt: skip
            procs.append(
                start_wireguard_go(
                    beta.host, work, ifname=if2, key=k2, address="10.209.0.2/24",
                    listen_port=51900, peer_public_b64=k1.public_b64,
                    allowed_ips="10.209.0.1/32", endpoint=f"{host.address}:51900",
                )
            )  # fmt: skip
            host.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.209.0.2"], check=False)
            results.append(
                (
                    "anchor: wireguard-go -> wireguard-go direct",
                    ping_ms(host, "10.209.0.2"),
                    iperf_gbps(host, beta.host, "10.209.0.2", seconds),
                )
            )
        finally:
            for proc in procs:
                stop_process(proc)
            if phone is not None:
                phone.stop()
            mesh.close()
    anchor = results[-1][2]
    print(f"iperf3 TCP, {seconds} s each, one run; tunnel MTU 1420")
    for label, rtt, gbps in results:
        ratio = f"{gbps / anchor:5.2f} x anchor" if anchor else ""
        print(f"{label:45} {gbps:6.2f} Gbit/s  rtt {rtt:6.3f} ms  {ratio}")


if __name__ == "__main__":
    main()
