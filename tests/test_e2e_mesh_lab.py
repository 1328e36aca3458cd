"""A real mesh in the namespace lab: `tunnelmesh serve` and three `tunnelmesh join` nodes (one
behind a full-cone NAT) with TUN devices and the UDP (WireGuard) transport.

Checks full connectivity by mesh IP and by name, byte-exact TCP transfers across the NAT, and
that a peer whose address changes stays reachable (roaming), that peers keep forwarding while
the coordinator is down and catch up when it returns (a peer
that joins afterwards is reachable from the old ones).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

pytest.importorskip("tunnelmesh_udp")

from tunnelmesh.testing.lab import Lab
from tunnelmesh.testing.mesh import MeshLab

pytestmark = pytest.mark.lab

NAMES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def mesh(module_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    """One mesh for the module (its set-up is most of each test's time). The tests run in
    file order; each leaves it a working mesh of every peer: the first only looks, the second
    moves beta to a new address, the last stops and restarts the coordinator and beta and adds
    delta."""
    m = MeshLab(module_lab, tmp_path_factory.mktemp("mesh"))
    try:
        for n in NAMES:
            m.add_peer(n, behind_nat=n == "gamma")
        m.start_coordinator()
        m.start_peers(NAMES)
        m.wait_links(timeout=30)
        yield m
    finally:
        m.close()


def ping_all(mesh: MeshLab, names: list[str], deadline: float = 10.0) -> None:
    failed = [
        f"{src}->{dst}"
        for src in names
        for dst in names
        if src != dst
        and mesh.ping(src, mesh.peers[dst].mesh_ip, count=1, deadline=deadline) is None
    ]
    assert not failed, f"no answer on {failed}"


def assert_transfer(mesh: MeshLab, src: str, dst: str, nbytes: int, port: int) -> None:
    r = mesh.transfer(src, dst, nbytes=nbytes, port=port)
    assert r["sent"] == r["received"] == nbytes
    assert r["sent_sha256"] == r["received_sha256"]


def test_full_mesh_by_ip_and_name_and_exact_transfers(mesh: MeshLab) -> None:
    ping_all(mesh, NAMES)
    # the peer behind the NAT is reached at the NAT's outside address (its reflexive endpoint)
    outside = mesh.nat.outside_address
    for src in ("alpha", "beta"):
        seen = {p["name"]: p for p in mesh.peers[src].status()["peers"]}
        assert seen["gamma"]["endpoint"].startswith(outside + ":"), seen["gamma"]
        assert seen["gamma"]["transport"] == "udp"
    # names resolve through each node's own resolver (ping prints the address it resolved)
    got = mesh.ping("gamma", "alpha.tunnelmesh", count=1)
    assert got is not None and got[0] == mesh.peers["alpha"].mesh_ip
    got = mesh.ping("alpha", "gamma", count=1)  # the search domain
    assert got is not None and got[0] == mesh.peers["gamma"].mesh_ip
    # byte-exact TCP both ways across the NAT, and between the two public peers
    assert_transfer(mesh, "gamma", "alpha", 8 << 20, 5301)
    assert_transfer(mesh, "alpha", "gamma", 8 << 20, 5302)
    assert_transfer(mesh, "beta", "alpha", 3 << 20, 5303)


def test_a_peer_that_changes_address_stays_reachable(mesh: MeshLab) -> None:
    beta = mesh.peers["beta"].host
    old = beta.address
    new = old.rsplit(".", 1)[0] + ".200"
    # (deleting a primary address also deletes its secondaries: delete first, then add)
    beta.run(["ip", "addr", "del", f"{old}/24", "dev", beta.dev])
    beta.run(["ip", "addr", "add", f"{new}/24", "dev", beta.dev])
    # beta's packets now come from the new address: the others roam to it at once
    for dst in ("alpha", "gamma"):
        assert mesh.ping("beta", mesh.peers[dst].mesh_ip, count=1, deadline=10) is not None
    ping_all(mesh, NAMES)
    # and its heartbeats publish only the new address (the reflexive one learnt on the old
    # network is dropped), so a peer that had not heard from beta would dial it there. beta's
    # control connection from the old address must time out first: bounded at 40 s.
    deadline = time.monotonic() + 40
    while True:
        seen = {p["name"]: p for p in mesh.peers["alpha"].status()["peers"]}["beta"]
        if seen["endpoints"] == [f"{new}:2223"] and seen["endpoint"] == f"{new}:2223":
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.3)
    assert_transfer(mesh, "gamma", "beta", 2 << 20, 5304)


def test_coordinator_down_then_back_and_a_new_peer_joins(mesh: MeshLab) -> None:
    mesh.stop_coordinator()
    # every node notices (its heartbeats fail) ...
    deadline = time.monotonic() + 20
    while any(mesh.peers[n].status()["coordinator_reachable"] for n in NAMES):
        assert time.monotonic() < deadline, "nodes still think the coordinator is reachable"
        time.sleep(0.3)
    # ... and still forwards to every peer it knows, NAT included
    ping_all(mesh, NAMES)
    assert_transfer(mesh, "gamma", "beta", 4 << 20, 5311)
    assert_transfer(mesh, "beta", "gamma", 4 << 20, 5312)
    # a node restarted meanwhile resumes from its stored context and cached peers
    mesh.stop_peer("beta")
    mesh.start_peer("beta")
    node = mesh.peers["beta"].node
    assert node is not None and any("resuming context" in line for line in node.lines)
    ping_all(mesh, NAMES)

    # the coordinator comes back with its state; a new peer joins and everyone reaches it
    mesh.start_coordinator()
    mesh.add_peer("delta")
    mesh.start_peer("delta")
    everyone = [*NAMES, "delta"]
    mesh.wait_links(everyone, timeout=40)
    ping_all(mesh, everyone)
    assert_transfer(mesh, "delta", "gamma", 2 << 20, 5313)
    got = mesh.ping("beta", "delta.tunnelmesh", count=1)
    assert got is not None and got[0] == mesh.peers["delta"].mesh_ip
