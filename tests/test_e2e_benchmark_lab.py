"""``tunnelmesh benchmark`` between two lab peers through the mesh (UDP transport).

bob enables the benchmark listener; alice measures: text output with throughput and RTT, the
documented JSON, --loss 10 measured as 10 +- 3 % over 1000 probes, --bandwidth shaping the
upload, and every impairment gone after each run. Figures are printed (the machine may be
shared; nothing is asserted about speed except the shaping's upper bound).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunnelmesh_udp")

from tunnelmesh.testing.mesh import MeshLab

pytestmark = pytest.mark.lab


@pytest.fixture
def mesh(lab: Any, tmp_path: Path) -> Iterator[MeshLab]:
    m = MeshLab(lab, tmp_path)
    try:
        yield m
    finally:
        m.close()


def bench(mesh: MeshLab, *args: str) -> str:
    alice = mesh.peers["alice"]
    proc = alice.host.run(
        [sys.executable, "-m", "tunnelmesh", "benchmark", "bob", *args],
        check=False,
        timeout=120,
        env=mesh.env(alice.home),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def no_impairment_left(mesh: MeshLab) -> None:
    host = mesh.peers["alice"].host
    assert "tunnelmesh_bench" not in host.run(["nft", "list", "tables"]).stdout
    assert "tbf" not in host.run(["tc", "qdisc", "show", "dev", "tm0"]).stdout


def test_benchmark_between_two_peers(mesh: MeshLab) -> None:
    for name in ("alice", "bob"):
        mesh.add_peer(name)
    with (mesh.peers["bob"].home / "peer.yaml").open("a") as f:
        f.write("benchmark:\n  enabled: true\n")
    mesh.start_coordinator()
    mesh.start_peers(["alice", "bob"])
    node = mesh.peers["bob"].node
    assert node is not None
    node.wait_line(r"benchmark listener on \S+:9998", 10)
    mesh.wait_links(timeout=30)

    text = bench(mesh, "--size", "5MB")
    print(text)
    assert "rtt min/avg/max" in text and "loss 0.0 %" in text
    assert "upload" in text and "download" in text and "Mbit/s" in text

    out = json.loads(bench(mesh, "--size", "2MB", "--json"))
    print(json.dumps(out))
    assert out["peer"] == "bob" and out["address"] == mesh.peers["bob"].mesh_ip
    assert out["device"] == "tm0" and out["size"] == 2_000_000
    assert out["upload"]["bytes"] == out["download"]["bytes"] == 2_000_000
    assert out["upload"]["mbps"] > 0 and out["download"]["mbps"] > 0
    assert out["probes"]["received"] == out["probes"]["sent"] == 200
    assert 0 < out["probes"]["rtt_ms"]["min"] <= out["probes"]["rtt_ms"]["max"]
    assert out["impairment"] == {"loss_pct": 0.0, "bandwidth_bps": None}

    lossy = json.loads(bench(mesh, "--loss", "10", "--probes", "1000", "--size", "1MB", "--json"))
    print("loss 10 %:", json.dumps(lossy["probes"]))
    assert 7.0 <= lossy["probes"]["loss_pct"] <= 13.0, lossy["probes"]
    assert lossy["upload"]["bytes"] == 1_000_000  # TCP still gets through
    no_impairment_left(mesh)

    shaped = json.loads(
        bench(mesh, "--bandwidth", "20mbit", "--direction", "upload", "--size", "3MB", "--json")
    )
    print("bandwidth 20mbit:", json.dumps(shaped["upload"]))
    assert "download" not in shaped
    assert shaped["upload"]["mbps"] <= 30.0, shaped["upload"]  # the bucket's rate, plus burst
    no_impairment_left(mesh)
