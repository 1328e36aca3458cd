"""Set-up shared by the lab tests whose coordinator serves S3 and shares on its own mesh IP
(``test_e2e_s3_mesh_lab``, ``test_e2e_dav_mesh_lab``, ``test_e2e_nfs_mesh_lab``).

The coordinator joins its own mesh as peer ``coord`` (``join_mesh:``, TUN ``tm0``) with
``s3: {enabled: true}``; the peers join over UDP; commands and scripts run in a peer's
namespace with that peer's home (its mesh context). Not a test module: pytest does not collect
it, the lab tests import it as they import ``test_e2e_server_peer_lab``'s helpers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_e2e_server_peer_lab import linked, poll
from tunnelmesh.testing.lab import Lab
from tunnelmesh.testing.mesh import MeshLab

COORD_UP = r"mesh peer coord: mesh IP (\S+) \(node up on tm0\)"
"""The coordinator's line once its own peer is up; group 1 is its mesh IP."""


@pytest.fixture(name="mesh")
def mesh_lab(lab: Lab, tmp_path: Path) -> Iterator[MeshLab]:
    """The fixture ``mesh``: a :class:`MeshLab` in this test's lab (a test module imports it)."""
    m = MeshLab(lab, tmp_path)
    try:
        yield m
    finally:
        m.close()


def coordinator_joins(mesh: MeshLab, tmp_path: Path, names: Iterable[str]) -> Path:
    """server.yaml gets ``s3`` and ``join_mesh`` (peer ``coord``); the peers ``names`` are
    added (not started). Returns the control socket of the coordinator's own node."""
    coord_sock = tmp_path / "coord-home" / "node.sock"
    with mesh.server_config.open("a") as f:
        f.write(
            "s3:\n  enabled: true\n"
            "join_mesh:\n"
            "  name: coord\n"
            f'  private_key: "{tmp_path / "coord-key"}"\n'
            f'  control_socket: "{coord_sock}"\n'
            "  tun:\n    name: tm0\n"
            '  dns:\n    listen: "127.0.0.53:53"\n    system: "off"\n    forward: false\n'
        )
    for name in names:
        mesh.add_peer(name)
    return coord_sock


def start_coordinator(mesh: MeshLab, *ready: str) -> str:
    """Start (or restart) the coordinator; wait until its own peer is up and each ``ready``
    line (a regular expression) was printed. Returns its mesh IP."""
    coord = mesh.start_coordinator()
    ip = coord.wait_line(COORD_UP, 60).group(1)
    for line in ready:
        coord.wait_line(line, 60)
    return ip


def start_peers(mesh: MeshLab, coord_sock: Path, names: Iterable[str]) -> None:
    """Start the peers ``names``; wait until each and the coordinator have a link both ways."""
    names = list(names)
    mesh.start_peers(names)
    wait_linked(mesh, coord_sock, names, 30)


def wait_linked(mesh: MeshLab, coord_sock: Path, names: Iterable[str], timeout: float) -> None:
    """Wait until each peer of ``names`` and the coordinator's node have a link both ways."""
    for name in names:
        poll(
            lambda n=name: linked(mesh.peers[n].control_socket, "coord"), timeout, f"{name}->coord"
        )
        poll(lambda n=name: linked(coord_sock, n), timeout, f"coord->{name}")


def tm(
    mesh: MeshLab, name: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``tunnelmesh ARGS`` in peer ``name``'s namespace with its home (its mesh context)."""
    peer = mesh.peers[name]
    proc = peer.host.run(
        [sys.executable, "-m", "tunnelmesh", *args],
        check=False,
        timeout=60,
        env=mesh.env(peer.home),
    )
    if check:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def run_script(
    mesh: MeshLab,
    name: str,
    script: str,
    argument: Any,
    *,
    timeout: float,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run the Python ``script`` in peer ``name``'s namespace with ``argument`` as JSON in
    argv[1]; it must exit 0. Returns the JSON lines it printed."""
    peer = mesh.peers[name]
    proc = peer.host.run(
        [sys.executable, "-c", script, json.dumps(argument)],
        check=False,
        timeout=timeout,
        env={**mesh.env(peer.home), **(env or {})},
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def exports(text: str) -> dict[str, str]:
    """The ``export K=V`` lines of ``tunnelmesh s3 credentials``."""
    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            out[key] = value.strip("'\"")
    return out
