"""Server-as-client and the system resolver, with real processes in the namespace lab.

* ``join_mesh:`` makes ``tunnelmesh serve`` a full mesh node: it gets a mesh IP and a TUN
  device, ``this.tunnelmesh`` / ``this.tm`` resolve to it through a peer's resolver, peers ping
  it over the mesh and it pings them.
* A peer with ``dns.system: resolv.conf`` points the system resolver at its mesh resolver (here
  the namespace's own ``/etc/netns/<ns>/resolv.conf``, which ``ip netns exec`` mounts over
  ``/etc/resolv.conf``; injected with ``TUNNELMESH_RESOLV_CONF``, the machine's file is never
  touched): ``getent hosts this.tm`` answers; a clean stop restores the file byte for byte,
  and after a SIGKILL the next start restores it first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")

from tunnelmesh.control_socket import ControlError, request
from tunnelmesh.testing.lab import Lab
from tunnelmesh.testing.mesh import NETNS_ETC, MeshLab, NodeProcess

pytestmark = pytest.mark.lab

# An A query to a resolver (dnslib, a core dependency): the addresses answered, one a line.
ASK = """
import sys
from dnslib import DNSRecord
reply = DNSRecord.parse(DNSRecord.question(sys.argv[2]).send(sys.argv[1], 53, timeout=3))
print("\\n".join(str(r.rdata) for r in reply.rr) or "none")
"""
ORIGINAL = "# the namespace's own resolver config\nnameserver 127.0.0.1\noptions timeout:1\n"


def poll(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def start_join(mesh: MeshLab, name: str, env: dict[str, str]) -> NodeProcess:
    peer = mesh.peers[name]
    proc = peer.host.python(
        "-m",
        "tunnelmesh",
        "-c",
        str(peer.home / "peer.yaml"),
        "join",
        "--server",
        mesh.server_url,
        "--name",
        name,
        env={**mesh.env(peer.home), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    peer.node = NodeProcess(name, proc, mesh.echo)
    peer.mesh_ip = peer.node.wait_line(r"mesh IP (\S+),", 60).group(1)
    peer.node.wait_line("node up:", 60)
    return peer.node


def linked(sock: Path, name: str) -> bool:
    try:
        st = request(sock, "node.status", timeout=5)
    except ControlError:
        return False
    return any(p["name"] == name and p["link"] for p in st["peers"])


@pytest.fixture
def mesh(lab: Lab, tmp_path: Path) -> Iterator[MeshLab]:
    m = MeshLab(lab, tmp_path)
    try:
        yield m
    finally:
        m.close()


def test_coordinator_is_a_mesh_peer_and_the_system_resolver_is_restored(
    mesh: MeshLab, tmp_path: Path
) -> None:
    coord_sock = tmp_path / "coord-home" / "node.sock"
    with mesh.server_config.open("a") as f:
        f.write(
            "join_mesh:\n"
            "  name: coord\n"
            f'  private_key: "{tmp_path / "coord-key"}"\n'
            f'  control_socket: "{coord_sock}"\n'
            "  tun:\n    name: tm0\n"
            '  dns:\n    listen: "127.0.0.53:53"\n    system: "off"\n    forward: false\n'
        )
    for name in ("alpha", "beta"):
        mesh.add_peer(name)
    alpha = mesh.peers["alpha"]
    yaml = alpha.home / "peer.yaml"
    yaml.write_text(yaml.read_text().replace('system: "off"', 'system: "resolv.conf"'))
    resolv = NETNS_ETC / alpha.host.ns / "resolv.conf"
    # the backup goes to the node's state directory: beside the file, `ip netns exec` (which
    # bind-mounts every file of /etc/netns/<ns>/) warned about it at every command
    backup = alpha.home / "dns" / (str(resolv).strip("/").replace("/", "_") + ".tunnelmesh-orig")
    resolv.write_text(ORIGINAL)
    alpha_env = {"TUNNELMESH_RESOLV_CONF": str(resolv)}

    coord = mesh.start_coordinator()
    coord_ip = coord.wait_line(r"mesh peer coord: mesh IP (\S+) \(node up on tm0\)", 60).group(1)
    mesh.start_peer("beta")
    start_join(mesh, "alpha", alpha_env)
    mesh.wait_links(timeout=30)
    for name in ("alpha", "beta"):
        poll(lambda n=name: linked(mesh.peers[n].control_socket, "coord"), 30, f"{name}->coord")
        poll(lambda n=name: linked(coord_sock, n), 30, f"coord->{name}")

    # the coordinator's peer by name, through beta's resolver, and over the mesh both ways
    for name in ("this.tunnelmesh", "this.tm", "coord.tunnelmesh"):
        got = mesh.ping("beta", name, count=1)
        assert got is not None and got[0] == coord_ip, (name, got)
    # ... and through the coordinator's own resolver, on the coordinator
    for name in ("this.tm", "this.tunnelmesh", "coord.tunnelmesh"):
        got = mesh.coord_host.run([sys.executable, "-c", ASK, "127.0.0.53", name]).stdout.split()
        assert got == [coord_ip], (name, got)
    beta_ip = mesh.peers["beta"].mesh_ip
    assert mesh.coord_host.ping(beta_ip, count=2, timeout=2)
    listed = json.loads(
        mesh.peers["beta"]
        .host.run(
            [sys.executable, "-m", "tunnelmesh", "peers", "--json"],
            env=mesh.env(mesh.peers["beta"].home),
        )
        .stdout
    )
    assert any(p["name"] == "coord" and p.get("is_coordinator") for p in listed)

    # alpha's system resolver points at its mesh resolver for as long as it runs
    assert backup.read_text() == ORIGINAL
    assert "nameserver 127.0.0.53" in resolv.read_text()
    assert sorted(p.name for p in resolv.parent.iterdir()) == ["resolv.conf"]
    assert alpha.host.run(["true"]).stderr == ""  # no warning from `ip netns exec`
    out = alpha.host.run(["getent", "hosts", "this.tm"]).stdout
    assert out.split()[0] == coord_ip
    mesh.stop_peer("alpha")
    assert resolv.read_text() == ORIGINAL and not backup.exists()

    # a crash leaves the swap behind; the next start restores the original first
    node = start_join(mesh, "alpha", alpha_env)
    node.proc.kill()
    node.proc.wait(10)
    alpha.node = None
    assert backup.read_text() == ORIGINAL and resolv.read_text() != ORIGINAL
    start_join(mesh, "alpha", alpha_env)
    assert backup.read_text() == ORIGINAL
    out = alpha.host.run(["getent", "hosts", "beta.tunnelmesh"]).stdout
    assert out.split()[0] == beta_ip
    mesh.stop_peer("alpha")
    assert resolv.read_text() == ORIGINAL and not backup.exists()

    # the coordinator stops its node with it: the TUN device goes
    assert mesh.coord_host.run(["ip", "link", "show", "tm0"], check=False).returncode == 0
    assert coord.stop() == 0
    mesh.coordinator = None
    assert mesh.coord_host.run(["ip", "link", "show", "tm0"], check=False).returncode != 0


def test_serve_stops_with_the_error_of_a_node_that_cannot_start(lab: Lab, tmp_path: Path) -> None:
    host = lab.add_host("coord")
    cfg = tmp_path / "server.yaml"
    cfg.write_text(
        f'auth_token: "{"t" * 24}"\n'
        f'listen: "{host.address}:8443"\n'
        f'stun_listen: "{host.address}:3478"\n'
        f'data_dir: "{tmp_path / "state"}"\n'
        "join_mesh:\n"
        "  name: coord\n"
        f'  private_key: "{tmp_path / "coord-key"}"\n'
        f'  control_socket: "{tmp_path / "node.sock"}"\n'
        "  tun:\n    name: lo\n"  # not a TUN device: the node cannot start
        "  dns:\n    enabled: false\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELMESH_")}
    env["TUNNELMESH_HOME"] = str(tmp_path / "home")
    proc = host.run(
        [sys.executable, "-m", "tunnelmesh", "serve", "-c", str(cfg)],
        env=env,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "coordinator stopped" in proc.stdout
    assert "lo" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
