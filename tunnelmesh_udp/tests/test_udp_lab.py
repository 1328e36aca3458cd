"""The UDP transport in the namespace lab: interop with wireguard-go, three peers, roaming.

Needs root, /dev/net/tun and Debian's wireguard-go, wireguard-tools, iperf3 and iputils-ping.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tunnelmesh_udp.labtools import KeyPair, start_static_node, start_wireguard_go, stop_process

pytestmark = pytest.mark.lab

PORT = 51820


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)} (Debian packages wireguard-go wireguard-tools iperf3)"
        )


def _iperf(client: Any, server: Any, address: str, seconds: int, *extra: str) -> dict[str, Any]:
    srv = server.popen(["iperf3", "-s", "-1", "-B", address], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if server.run(["ss", "-ltn"], check=False).stdout.count(":5201"):
                break
            server.run(["sleep", "0.1"])
        out = client.run(
            ["iperf3", "-J", "-c", address, "-t", str(seconds), *extra], timeout=seconds + 30
        ).stdout
    finally:
        stop_process(srv)
    result: dict[str, Any] = json.loads(out)
    return result


def _wg_pair(lab: Any, tmp_path: Path, extra: dict[str, Any] | None = None) -> tuple[Any, ...]:
    tm, wg = lab.add_host("tm"), lab.add_host("wg")
    k_tm, k_wg = KeyPair(), KeyPair()
    ifname = "tmwg" + secrets.token_hex(4)
    wgproc = start_wireguard_go(
        wg,
        tmp_path,
        ifname=ifname,
        key=k_wg,
        address="10.202.0.2/24",
        listen_port=PORT,
        peer_public_b64=k_tm.public_b64,
        allowed_ips="10.202.0.1/32",
        endpoint=f"{tm.address}:{PORT}",
    )
    node = start_static_node(
        tm,
        tmp_path,
        name="tm",
        key=k_tm,
        address="10.202.0.1/24",
        listen_port=PORT,
        peers=[
            {
                "name": "wg",
                "public_key": k_wg.public_b64,
                "endpoint": f"{wg.address}:{PORT}",
                "allowed_ips": ["10.202.0.2/32"],
            }
        ],
        extra=extra,
    )
    return tm, wg, node, wgproc, ifname


def test_wireguard_go_interop_tunnelmesh_initiates(lab: Any, tmp_path: Path) -> None:
    _need("wireguard-go", "wg", "iperf3", "ping")
    tm, wg, node, _wgproc, ifname = _wg_pair(lab, tmp_path)
    assert tm.ping("10.202.0.2", count=3, timeout=2)
    assert wg.ping("10.202.0.1", count=3, timeout=2)
    result = _iperf(tm, wg, "10.202.0.2", 2)
    assert result["end"]["sum_received"]["bytes"] > 1_000_000
    shown = wg.run(["wg", "show", ifname, "latest-handshakes"]).stdout
    assert int(shown.split()[1]) > 0
    out = stop_process(node)
    assert "handshakes=" in out


def test_wireguard_go_interop_wireguard_go_initiates(lab: Any, tmp_path: Path) -> None:
    _need("wireguard-go", "wg", "iperf3", "ping")
    tm, wg, _node, _wgproc, _ifname = _wg_pair(lab, tmp_path)
    assert wg.ping("10.202.0.1", count=3, timeout=2)  # wireguard-go sends the initiation
    result = _iperf(wg, tm, "10.202.0.1", 2)  # TCP towards tunnelmesh
    assert result["end"]["sum_received"]["bytes"] > 1_000_000
    result = _iperf(wg, tm, "10.202.0.1", 2, "-R")
    assert result["end"]["sum_received"]["bytes"] > 1_000_000


def test_rekey_during_a_transfer_keeps_the_connection(lab: Any, tmp_path: Path) -> None:
    _need("wireguard-go", "wg", "iperf3", "ping")
    tm, wg, node, _wgproc, _ifname = _wg_pair(lab, tmp_path, {"rekey_after_time": 6.0})
    assert tm.ping("10.202.0.2", count=2, timeout=2)  # tunnelmesh is the initiator
    result = _iperf(tm, wg, "10.202.0.2", 15)
    intervals = [i["sum"]["bytes"] for i in result["intervals"]]
    # The connection lives through every rekey: data flows until the end. (One empty second
    # is tolerated: on this shared 2-core machine a TCP retransmission timeout can take that.)
    assert len(intervals) >= 14 and all(b > 0 for b in intervals[-3:]), intervals
    assert sum(1 for b in intervals if b == 0) <= 1, intervals
    out = stop_process(node)
    handshakes = int(re.search(r"handshakes=(\d+)", out).group(1))  # type: ignore[union-attr]
    assert handshakes >= 2, out


def test_three_peers_full_mesh_and_roaming(lab: Any, tmp_path: Path) -> None:
    _need("iperf3", "ping")
    hosts = [lab.add_host(n) for n in ("a", "b", "c")]
    keys = [KeyPair() for _ in hosts]
    mesh = [f"10.203.0.{i + 1}" for i in range(3)]
    nodes = []
    for i, host in enumerate(hosts):
        peers = [
            {
                "name": "abc"[j],
                "public_key": keys[j].public_b64,
                "endpoint": f"{hosts[j].address}:{PORT}",
                "allowed_ips": [f"{mesh[j]}/32"],
            }
            for j in range(3)
            if j != i
        ]
        nodes.append(
            start_static_node(
                host,
                tmp_path,
                name="abc"[i],
                key=keys[i],
                address=f"{mesh[i]}/24",
                listen_port=PORT,
                peers=peers,
            )
        )
    for i, host in enumerate(hosts):
        for j in range(3):
            if i != j:
                assert host.ping(mesh[j], count=2, timeout=2), (i, j)
    # roaming: b's underlay address changes while a TCP stream from a to b runs
    a, b = hosts[0], hosts[1]
    srv = b.popen(["iperf3", "-s", "-1", "-B", mesh[1]], stdout=subprocess.DEVNULL)
    for _ in range(50):
        if b.run(["ss", "-ltn"], check=False).stdout.count(":5201"):
            break
        b.run(["sleep", "0.1"])
    client = a.popen(["iperf3", "-J", "-c", mesh[1], "-t", "8"], stdout=subprocess.PIPE)
    b.run(["sleep", "2"])
    old = b.address
    new = old.rsplit(".", 1)[0] + ".200"
    # keep the new (secondary) address when the primary goes (namespace-local sysctl)
    b.run(["sysctl", "-q", "-w", f"net.ipv4.conf.{b.dev}.promote_secondaries=1"])
    b.run(["ip", "addr", "add", f"{new}/24", "dev", b.dev])
    b.run(["ip", "addr", "del", f"{old}/24", "dev", b.dev])
    out, _ = client.communicate(timeout=40)
    stop_process(srv)
    assert client.returncode == 0
    result = json.loads(out)
    intervals = [i["sum"]["bytes"] for i in result["intervals"]]
    assert sum(intervals[-3:]) > 0, intervals  # the stream kept going after the move
    assert result["end"]["sum_received"]["bytes"] > 1_000_000
    # c learns b's new endpoint from b's first authenticated packet
    assert b.ping(mesh[2], count=2, timeout=2)
    assert hosts[2].ping(mesh[1], count=2, timeout=2)
    for node in nodes:
        stop_process(node)
