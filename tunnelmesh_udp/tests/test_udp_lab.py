"""The UDP transport in the namespace lab: interop with wireguard-go, three peers, roaming.

Needs root, /dev/net/tun and Debian's wireguard-go, wireguard-tools, iperf3 and iputils-ping.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tunnelmesh_udp.labtools import (
    KeyPair,
    start_static_node,
    start_wireguard_go,
    stop_process,
    wait_ready,
)

pytestmark = pytest.mark.lab

PORT = 51820


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)} (Debian packages wireguard-go wireguard-tools iperf3)"
        )


def _poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``condition()`` holds, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _iperf_server(server: Any, address: str) -> subprocess.Popen[str]:
    """Start a one-shot iperf3 server on ``address`` and wait until it listens."""
    srv: subprocess.Popen[str] = server.popen(
        ["iperf3", "-s", "-1", "-B", address], stdout=subprocess.DEVNULL
    )
    _poll(
        lambda: f"{address}:5201" in server.run(["ss", "-ltnH"], check=False).stdout,
        10,
        "iperf3 -s",
    )
    return srv


def _iperf(client: Any, server: Any, address: str, seconds: int, *extra: str) -> dict[str, Any]:
    srv = _iperf_server(server, address)
    try:
        out = client.run(
            ["iperf3", "-J", "-c", address, "-t", str(seconds), *extra], timeout=seconds + 30
        ).stdout
    finally:
        stop_process(srv)
    result: dict[str, Any] = json.loads(out)
    return result


def _bytes_acked(host: Any, address: str) -> int:
    """The largest ``bytes_acked`` of ``host``'s TCP connections to ``address``:5201."""
    out = host.run(["ss", "-tinH", "dst", f"{address}:5201"], check=False).stdout
    return max((int(n) for n in re.findall(r"bytes_acked:(\d+)", out)), default=0)


def _wg_pair(lab: Any, tmp_path: Path, extra: dict[str, Any] | None = None) -> tuple[Any, ...]:
    tm, wg = lab.add_host("tm"), lab.add_host("wg")
    k_tm, k_wg = KeyPair(), KeyPair()
    ifname = "tmwg" + secrets.token_hex(4)
    node = start_static_node(  # starts while wireguard-go is set up; ready checked below
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
        wait=False,
    )
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
    wait_ready(node)
    return tm, wg, node, wgproc, ifname


def test_wireguard_go_interop_tunnelmesh_initiates(lab: Any, tmp_path: Path) -> None:
    """Also the send-side TUN TSO path: tunnelmesh cuts the kernel's TCP super-packets into
    segments, and wireguard-go's kernel (which checks every checksum) must accept them all."""
    _need("wireguard-go", "wg", "iperf3", "ping")
    tm, wg, node, _wgproc, ifname = _wg_pair(lab, tmp_path, {"tun_tso": True})
    assert tm.ping("10.202.0.2", count=3, timeout=2)
    assert wg.ping("10.202.0.1", count=3, timeout=2)
    result = _iperf(tm, wg, "10.202.0.2", 2)
    assert result["end"]["sum_received"]["bytes"] > 1_000_000
    shown = wg.run(["wg", "show", ifname, "latest-handshakes"]).stdout
    assert int(shown.split()[1]) > 0
    out = stop_process(node)
    assert "handshakes=" in out and "drops={}" in out, out
    segments = re.search(r"'tso_segments': (\d+)", out)
    assert segments is not None and int(segments.group(1)) > 1000, out  # the TSO path ran
    checks = wg.run(["nstat", "-asz", "TcpInCsumErrors", "IpInHdrErrors"]).stdout
    assert re.findall(r"(?m)^\w+\s+(\d+)", checks) == ["0", "0"], checks


def test_wireguard_go_interop_wireguard_go_initiates(lab: Any, tmp_path: Path) -> None:
    _need("wireguard-go", "wg", "iperf3", "ping")
    tm, wg, _node, _wgproc, _ifname = _wg_pair(lab, tmp_path)
    assert wg.ping("10.202.0.1", count=3, timeout=2)  # wireguard-go sends the initiation
    result = _iperf(wg, tm, "10.202.0.1", 2)  # TCP towards tunnelmesh
    assert result["end"]["sum_received"]["bytes"] > 1_000_000
    result = _iperf(wg, tm, "10.202.0.1", 2, "-R")
    assert result["end"]["sum_received"]["bytes"] > 1_000_000


def test_rekey_during_a_transfer_keeps_the_connection(lab: Any, tmp_path: Path) -> None:
    """tunnelmesh rekeys every 5 s under a TCP stream towards wireguard-go: no second without
    data, and no packet refused by either key rotation (tunnelmesh counts every drop).

    The stream is capped at 100 Mbit/s: at full speed tunnelmesh's bursts overflow the 208 KiB
    default receive buffer of Debian's wireguard-go (it sets no SO_RCVBUF), TCP then runs at
    10-15 % loss, and a CPU-starved wireguard-go on a loaded machine turns that into
    retransmission timeouts: an empty second that says nothing about rekeying.
    """
    _need("wireguard-go", "wg", "iperf3", "ping")
    tm, wg, node, _wgproc, _ifname = _wg_pair(lab, tmp_path, {"rekey_after_time": 5.0})
    assert tm.ping("10.202.0.2", count=2, timeout=2)  # tunnelmesh is the initiator
    result = _iperf(tm, wg, "10.202.0.2", 11, "-b", "100M")
    intervals = [i["sum"]["bytes"] for i in result["intervals"]]
    assert len(intervals) >= 10 and all(b > 0 for b in intervals), intervals
    out = stop_process(node)
    handshakes = int(re.search(r"handshakes=(\d+)", out).group(1))  # type: ignore[union-attr]
    assert handshakes >= 2, out  # the first one and at least one rekey mid-stream
    assert "drops={}" in out, out  # no unknown_index / replay / expired / bad_tag


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
                wait=False,
            )
        )
    for node in nodes:  # started in parallel
        wait_ready(node)
    for i, host in enumerate(hosts):
        for j in range(3):
            if i != j:
                assert host.ping(mesh[j], count=2, timeout=2), (i, j)
    # roaming: b's underlay address changes while a TCP stream from a to b runs. b only
    # receives (and ACKs): a learns the new address from the keepalive b sends when its
    # address changes (in plain WireGuard only a handshake timer, 15 s later, would tell it)
    a, b = hosts[0], hosts[1]
    srv = _iperf_server(b, mesh[1])
    client = a.popen(["iperf3", "-J", "-c", mesh[1], "-t", "3"], stdout=subprocess.PIPE)
    _poll(lambda: _bytes_acked(a, mesh[1]) > 1_000_000, 10, "the stream to get going")
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
    assert len(intervals) >= 3 and all(b > 0 for b in intervals), intervals  # no pause
    assert result["end"]["sum_received"]["bytes"] > 1_000_000
    # c learns b's new endpoint from b's first authenticated packet
    assert b.ping(mesh[2], count=2, timeout=2)
    assert hosts[2].ping(mesh[1], count=2, timeout=2)
    for node in nodes:
        stop_process(node)
