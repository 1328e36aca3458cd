"""The service side of real nodes in the namespace lab: systemd's notify protocol, and
``tunnelmesh cleanup`` after ``kill -9``.

* The test plays systemd: it binds the ``NOTIFY_SOCKET`` datagram socket and gives it (with
  ``WATCHDOG_USEC``) to ``serve`` and ``join``. A join whose coordinator is unreachable never
  sends ``READY=1``. Once the coordinator runs, ``READY=1`` arrives when the node is registered
  (its context holds the session) and its TUN device has the mesh IP (checked at once on
  arrival, so an early READY would fail), then ``WATCHDOG=1`` pings, ``STOPPING=1`` on stop.
* An exit node and an exit client with the resolv.conf fallback are killed with SIGKILL: routes
  (proto 211), the exit's nftables table and ip_forward, and the swapped resolv.conf stay
  behind; ``tunnelmesh cleanup`` puts the routing tables, the nftables ruleset, ip_forward and
  resolv.conf back exactly as they were before the nodes started.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")

from test_e2e_exit_lab import our_routes, routing_state
from tunnelmesh.testing.lab import Host, Lab
from tunnelmesh.testing.mesh import MeshLab, NodeProcess, Peer

pytestmark = pytest.mark.lab


@pytest.fixture
def mesh(lab: Lab, tmp_path: Path) -> Iterator[MeshLab]:
    m = MeshLab(lab, tmp_path)
    try:
        yield m
    finally:
        m.close()


class NotifySocket:
    """systemd's side of sd_notify: datagrams with their arrival time, in a thread."""

    def __init__(self, path: Path, on_ready: object = None) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o666)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.checks: list[object] = []
        self.on_ready = on_ready
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode()
            at = time.monotonic()
            if "READY=1" in text.splitlines() and callable(self.on_ready):
                self.checks.append(self.on_ready())  # at once, before anything else arrives
            self.messages.append((at, text))  # after the check: wait() then sees both

    def wait(self, line: str, timeout: float, after: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, (_, text) in enumerate(self.messages[after:], after):
                if line in text.splitlines():
                    return i
            time.sleep(0.05)
        raise AssertionError(f"no {line!r} within {timeout} s: {self.messages}")

    def count(self, line: str, after: int = 0) -> int:
        return sum(line in t.splitlines() for _, t in self.messages[after:])

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def join(mesh: MeshLab, name: str, env: dict[str, str], *args: str) -> NodeProcess:
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
        *args,
        env={**mesh.env(peer.home), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    peer.node = NodeProcess(name, proc, mesh.echo)
    return peer.node


def registered_and_up(peer: Peer) -> tuple[bool, bool]:
    """(the context holds a session and mesh IP, tm0 has that IP), read right now."""
    try:
        data = json.loads((peer.home / "contexts.json").read_text())
    except (OSError, ValueError):
        return False, False
    ctxs = list(data.get("contexts", {}).values())
    if not ctxs or not ctxs[0].get("session_token") or not ctxs[0].get("mesh_ip"):
        return False, False
    ip = ctxs[0]["mesh_ip"]
    proc = peer.host.run(["ip", "-j", "addr", "show", "dev", "tm0"], check=False)
    addrs = [a["local"] for i in json.loads(proc.stdout or "[]") for a in i.get("addr_info", [])]
    return True, ip in addrs


def test_ready_only_after_registration_then_watchdog(mesh: MeshLab, tmp_path: Path) -> None:
    alice = mesh.add_peer("alice")
    sock = NotifySocket(tmp_path / "notify.sock", on_ready=lambda: registered_and_up(alice))
    env = {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "1000000"}
    try:
        # no coordinator yet: join fails, and never says READY
        node = join(mesh, "alice", env)
        assert node.proc.wait(60) != 0
        assert sock.messages == []
        alice.node = None

        # the coordinator says READY once it listens
        coord_sock = NotifySocket(tmp_path / "coord-notify.sock")
        mesh.extra_env = {"NOTIFY_SOCKET": str(coord_sock.path)}
        try:
            mesh.start_coordinator()
            coord_sock.wait("READY=1", 10)
            assert any("STATUS=coordinator listening" in t for _, t in coord_sock.messages)
        finally:
            mesh.extra_env = {}
            coord_sock.close()

        node = join(mesh, "alice", env)
        i = sock.wait("READY=1", 60)
        assert sock.checks == [(True, True)], sock.checks  # registered, TUN up: at READY
        status = sock.messages[i][1]
        assert "STATUS=node alice up, mesh IP " in status, status
        deadline = time.monotonic() + 20  # pings every 0.5 s; bounded wait, not a timing test
        while sock.count("WATCHDOG=1", after=i) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sock.count("WATCHDOG=1", after=i) >= 3, sock.messages
        mesh.stop_peer("alice")
        sock.wait("STOPPING=1", 10, after=i)
    finally:
        sock.close()


def settled(host: Host) -> Host:
    """Wait until the host's IPv6 link-local addresses are configured (no longer tentative):
    the routing table changes by itself until then."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        out = host.run(["ip", "-6", "addr", "show", "dev", "eth0"]).stdout
        if "scope link" in out and "tentative" not in out:
            return host
        time.sleep(0.2)
    raise AssertionError(f"{host.name}: IPv6 link-local address still tentative")


def exit_state(host: Host) -> str:
    ruleset = host.run(["nft", "list", "ruleset"]).stdout
    forward = host.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout
    return ruleset + "--\n" + forward


def test_cleanup_after_kill9_restores_exactly(mesh: MeshLab, tmp_path: Path) -> None:
    exit_peer, client = mesh.add_peer("exit"), mesh.add_peer("client")
    with (exit_peer.home / "peer.yaml").open("a") as f:
        f.write("allow_exit_traffic: true\n")
    # the client swaps "its" resolv.conf (a file of the test, never the host's)
    resolv = tmp_path / "client-resolv.conf"
    original = "# the host's resolver\nnameserver 192.0.2.53\nsearch example.org\n"
    resolv.write_text(original)
    (client.home / "peer.yaml").write_text(
        "name: client\n"
        f'control_socket: "{client.control_socket}"\n'
        "tun:\n  name: tm0\n"
        'dns:\n  listen: "127.0.0.53:53"\n  system: resolv.conf\n'
    )
    client_env = {"TUNNELMESH_RESOLV_CONF": str(resolv)}
    before_client = routing_state(settled(client.host)), exit_state(client.host)
    before_exit = routing_state(settled(exit_peer.host)), exit_state(exit_peer.host)
    assert "1" not in exit_state(exit_peer.host).rsplit("--", 1)[1]  # forwarding off

    mesh.start_coordinator()
    mesh.start_peer("exit")
    node = join(mesh, "client", client_env, "--exit-node", "exit")
    node.wait_line(r"exit node: internet traffic via exit", 60)
    assert "Written by tunnelmesh" in resolv.read_text()

    for peer in (client, exit_peer):
        assert peer.node is not None
        peer.node.proc.kill()  # kill -9: nothing is undone
        peer.node.proc.wait(10)
        peer.node = None
    # what the crash left behind
    assert our_routes(client.host) != ""
    assert "tunnelmesh_exit" in exit_state(exit_peer.host)
    assert exit_state(exit_peer.host).endswith("--\n1\n")
    assert "Written by tunnelmesh" in resolv.read_text()

    from tunnelmesh.service.cleanup import node_running, other_sockets

    others = [o for o in other_sockets() if node_running(o)]
    if others:  # cleanup rightly leaves shared routes/NAT to a running node of this machine
        pytest.skip(f"a tunnelmesh node outside the lab runs on this machine: {others}")

    def cleanup(peer: Peer, env: dict[str, str]) -> str:
        proc = peer.host.run(
            [sys.executable, "-m", "tunnelmesh", "-c", str(peer.home / "peer.yaml"), "cleanup"],
            check=False,
            timeout=60,
            env={**mesh.env(peer.home), **env},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    out = cleanup(client, client_env)
    assert "exit route" in out and f"restored {resolv}" in out, out
    out = cleanup(exit_peer, {})
    assert "ip_forward" in out and "tunnelmesh_exit" in out, out

    assert (routing_state(client.host), exit_state(client.host)) == before_client
    assert (routing_state(exit_peer.host), exit_state(exit_peer.host)) == before_exit
    assert resolv.read_text() == original
    assert not Path(str(resolv) + ".tunnelmesh-orig").exists()
    # a second run finds nothing
    assert "nothing left behind" in cleanup(client, client_env)
    assert "nothing left behind" in cleanup(exit_peer, {})
