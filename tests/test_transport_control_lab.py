"""Transport controls at run time with real nodes (issue 12): ``tunnelmesh serve`` and two
``tunnelmesh join`` nodes (TUN; UDP, SSH and relay) in the namespace lab.

The admin (alpha) forces beta onto the relay with ``tunnelmesh peers transport beta --force
relay``; the coordinator pushes the order to beta's node, which re-selects its paths without a
restart, and ``tunnelmesh peers`` on beta shows ``relay`` within 5 s; ``--clear`` gives beta
its own order back and it returns to UDP.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")
pytest.importorskip("tunnelmesh_relay")

from tunnelmesh.testing.lab import Lab
from tunnelmesh.testing.mesh import MeshLab

pytestmark = pytest.mark.lab


@pytest.fixture
def mesh(lab: Lab, tmp_path: Path) -> Iterator[MeshLab]:
    m = MeshLab(lab, tmp_path)
    try:
        for n in ("alpha", "beta"):
            m.add_peer(n)
        m.start_coordinator()
        m.start_peers(["alpha", "beta"])
        m.wait_links(timeout=30)
        yield m
    finally:
        m.close()


def cli(m: MeshLab, on: str, *args: str) -> str:
    peer = m.peers[on]
    return peer.host.run(
        [sys.executable, "-m", "tunnelmesh", *args], env=m.env(peer.home), timeout=30
    ).stdout


def shown_transport(m: MeshLab, on: str, towards: str) -> str:
    """The TRANSPORT ``tunnelmesh peers`` shows on ``on`` for ``towards`` (its own report)."""
    rows = json.loads(cli(m, on, "peers", "--json"))
    me = next(p for p in rows if p["self"])
    return str(me.get("transports", {}).get(towards, ""))


def wait_shown(m: MeshLab, on: str, towards: str, transport: str, timeout: float) -> float:
    """Seconds from now until a ``tunnelmesh peers`` started then shows ``transport`` (the
    start of the call that first shows it: the command's own start-up, seconds on a loaded
    machine, is not the mesh's delay)."""
    start = time.monotonic()
    while True:
        asked = time.monotonic()
        seen = shown_transport(m, on, towards)
        if seen == transport:
            return asked - start
        assert asked - start < timeout, f"{on}: {seen!r}, not {transport!r}"
        time.sleep(0.1)


def test_an_admin_forces_a_peer_onto_the_relay_and_back(mesh: MeshLab) -> None:
    m = mesh
    wait_shown(m, "beta", "alpha", "udp", 30)
    started = time.monotonic()
    out = cli(m, "alpha", "peers", "transport", "beta", "--force", "relay")
    assert "order set relay" in out, out
    took = wait_shown(m, "beta", "alpha", "relay", 5.0)
    print(
        f"\nforce relay: the command took {time.monotonic() - started - took:.2f} s (loaded "
        f"machine), then `tunnelmesh peers` on beta showed relay after {took:.2f} s"
    )
    status = {p["name"]: p for p in m.peers["beta"].status()["peers"]}
    assert status["alpha"]["transport"] == "relay" and status["alpha"]["order"] == ["relay"]
    state = json.loads(cli(m, "beta", "peers", "transport", "beta", "--json"))
    assert state["order"] == ["relay"] and state["effective_order"] == ["relay"]
    # beta itself may change its own order: back to its own
    out = cli(m, "beta", "peers", "transport", "beta", "--clear")
    assert "order set none" in out
    took = wait_shown(m, "beta", "alpha", "udp", 30)
    print(f"cleared -> back on udp: {took:.2f} s")
