"""Prometheus metrics of real nodes and a coordinator in the namespace lab.

``tunnelmesh serve`` and two ``tunnelmesh join`` nodes (TUN, UDP) with default ``metrics:``
settings: each node serves ``/metrics`` on its mesh IP port 9273 (reached from the other peer
through the mesh), the coordinator on 127.0.0.1:9274 of its host only. After pings, the
per-peer WireGuard counters, the path's transport and the coordinator's registrations show;
``promtool check metrics`` accepts every exposition.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")

from prometheus_client.parser import text_string_to_metric_families
from tunnelmesh.testing.lab import Host, Lab
from tunnelmesh.testing.mesh import MeshLab

pytestmark = pytest.mark.lab

FETCH = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=10) as r:\n"
    "    assert r.headers['Content-Type'].startswith('text/plain; version=0.0.4'), r.headers\n"
    "    sys.stdout.write(r.read().decode())\n"
)


@pytest.fixture
def mesh(lab: Lab, tmp_path: Path) -> Iterator[MeshLab]:
    m = MeshLab(lab, tmp_path)
    try:
        yield m
    finally:
        m.close()


def scrape(host: Host, url: str) -> str:
    proc = host.run([sys.executable, "-c", FETCH, url], check=False, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_node_and_coordinator_metrics(mesh: MeshLab) -> None:
    for name in ("alice", "bob"):
        mesh.add_peer(name)
    coord = mesh.start_coordinator()
    mesh.start_peers(["alice", "bob"])
    mesh.wait_links(["alice", "bob"], timeout=30)
    alice, bob = mesh.peers["alice"], mesh.peers["bob"]
    assert mesh.ping("alice", bob.mesh_ip, count=5) is not None
    assert alice.node is not None
    alice.node.wait_line(r"node metrics on http://", 10)

    # bob scrapes alice through the mesh; the port is on alice's mesh IP only
    text = scrape(bob.host, f"http://{alice.mesh_ip}:9273/metrics")
    promtool_check(text)
    s = samples(text)
    peer = (("peer", "bob"),)
    udp = (("peer", "bob"), ("transport", "udp"))
    assert s[("tunnelmesh_peer_transmit_packets_total", udp)] >= 5
    assert s[("tunnelmesh_peer_receive_packets_total", udp)] >= 5
    assert s[("tunnelmesh_peer_receive_bytes_total", udp)] > 0
    assert s[("tunnelmesh_peer_handshakes_total", udp)] >= 1
    assert s[("tunnelmesh_peer_up", peer)] == 1
    assert s[("tunnelmesh_peer_transport", (("peer", "bob"), ("transport", "udp")))] == 1
    assert s[("tunnelmesh_peer_path_changes_total", peer)] >= 1
    assert s[("tunnelmesh_forwarder_packets_total", (("direction", "tx"),))] >= 5
    assert s[("tunnelmesh_coordinator_reachable", ())] == 1
    assert ("tunnelmesh_filter_tracked_flows", ()) in s
    assert ("tunnelmesh_dns_queries_total", ()) in s
    # not on the lab LAN: the node listens on its mesh IP only
    lan = bob.host.run(
        [sys.executable, "-c", FETCH, f"http://{alice.host.address}:9273/metrics"],
        check=False,
        timeout=30,
    )
    assert lan.returncode != 0

    # the coordinator: 127.0.0.1 of its host
    coord.wait_line(r"coordinator metrics on http://127\.0\.0\.1:9274/metrics", 10)
    ctext = scrape(mesh.coord_host, "http://127.0.0.1:9274/metrics")
    promtool_check(ctext)
    c = samples(ctext)
    assert (
        c[
            (
                "tunnelmesh_coordinator_registrations_total",
                (("reason", ""), ("result", "registered")),
            )
        ]
        >= 2
    )
    assert c[("tunnelmesh_coordinator_peer_online", (("peer", "alice"),))] == 1
    assert c[("tunnelmesh_coordinator_peers", (("state", "online"),))] == 2
    assert c[("tunnelmesh_coordinator_heartbeats_total", ())] >= 1
    remote = alice.host.run(
        [sys.executable, "-c", FETCH, f"http://{mesh.coord_host.address}:9274/metrics"],
        check=False,
        timeout=30,
    )
    assert remote.returncode != 0
