"""Exit nodes end to end with real `tunnelmesh serve`/`join` processes in the namespace lab.

The "internet" host sits behind a router that only the exit's LAN reaches, so the client can
reach it only through the exit. Checked: the page arrives through the exit and the web server sees the
exit's address (masquerade); mesh pings stay direct (the exit forwards none of them); stopping
the client restores its routing table exactly, also after a SIGKILL and a restart; a peer that
does not allow exit traffic is refused (error line, no routes); the exit undoes its NAT and
forwarding on stop; `tunnelmesh peers --json` shows which peer is an exit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")

from tunnelmesh.testing.lab import INTERNET_PAGE, Host, Lab, wait_for_line
from tunnelmesh.testing.mesh import MeshLab, NodeProcess

pytestmark = pytest.mark.lab

ECHO_PORT = 8080
# Answers every GET with the client address it sees (the "access log" of the internet host).
# GET /bytes/N sends N pseudo-random bytes; POST answers "<length> <sha256>" of the body.
ECHO = """
import hashlib, http.server, random, sys
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/bytes/"):
            self.reply(random.Random(7).randbytes(int(self.path[7:])))
        else:
            self.reply(self.client_address[0].encode())
    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
server.serve_forever()
"""

BULK = """
import hashlib, random, sys, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
got = urllib.request.urlopen(url + f"bytes/{n}", timeout=20).read()
want = random.Random(7).randbytes(n)
print("download", len(got), got == want)
body = random.Random(8).randbytes(n)
req = urllib.request.Request(url, data=body, method="POST")
print("upload", urllib.request.urlopen(req, timeout=20).read().decode(),
      hashlib.sha256(body).hexdigest())
"""

FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode(), end="")
except OSError as exc:
    print("failed:", exc)
"""


def fetch(host: Host, url: str) -> str:
    return host.run([sys.executable, "-c", FETCH, url], timeout=30).stdout


def routing_state(host: Host) -> str:
    """Every IPv4 and IPv6 route of every table."""

    # Sorted: a table is a set. Without the kernel's link-local routes: eth0's `local fe80::`
    # route appears only once IPv6 duplicate address detection ends, which a fast lab set-up
    # can outrun before the first snapshot (CI: "routes not restored" on that line alone).
    def table(*family: str) -> list[str]:
        out = host.run(["ip", *family, "route", "show", "table", "all"]).stdout.splitlines()
        return sorted(line for line in out if "fe80:" not in line)

    return "\n".join([*table(), "--", *table("-6")]) + "\n"


def our_routes(host: Host) -> str:
    return host.run(["ip", "route", "show", "proto", "211"]).stdout.strip()


def start_join(mesh: MeshLab, name: str, *args: str) -> NodeProcess:
    """`tunnelmesh join` for a peer with extra options; returns once the node is up."""
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
        env=mesh.env(peer.home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    peer.node = NodeProcess(name, proc, mesh.echo)
    m = peer.node.wait_line(r"mesh IP (\S+),", 60)
    peer.mesh_ip = m.group(1)
    peer.node.wait_line("node up:", 60)
    return peer.node


def poll(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def mesh(lab: Lab, tmp_path: Path) -> Iterator[MeshLab]:
    m = MeshLab(lab, tmp_path)
    try:
        yield m
    finally:
        m.close()


def test_exit_node_end_to_end(lab: Lab, mesh: MeshLab) -> None:
    for name in ("exit", "other", "client"):
        mesh.add_peer(name)
    exit_peer, client = mesh.peers["exit"], mesh.peers["client"]
    with (exit_peer.home / "peer.yaml").open("a") as f:
        f.write("allow_exit_traffic: true\n")  # the config key; the client uses the CLI flag
    # The exit's uplink: its LAN (10.77.n.0/24) behind a router (a NAT) to the "internet"
    # (198.51.100.0/24, a range an exit forwards to: not private, not the exit's own LAN).
    inet = lab.add_switch("inet", "198.51.100.0/24")
    router = lab.add_nat("router", outside=inet)
    lab.connect(exit_peer.host, router.inside)
    far_address = router.outside_address  # what the internet sees of the exit's traffic
    internet = lab.add_internet(switch=inet)
    echo = internet.python("-c", ECHO, internet.address, str(ECHO_PORT), stdout=subprocess.PIPE)
    wait_for_line(echo, "ready", timeout=15)
    echo_url = f"http://{internet.address}:{ECHO_PORT}/"
    assert client.host.route_get(internet.address) is None  # only the exit can get there

    mesh.start_coordinator()
    exit_node = mesh.start_peer("exit").node
    assert exit_node is not None
    mesh.start_peer("other")
    exit_node.wait_line("exit node: forwarding and masquerading", 5)
    assert exit_peer.host.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    before = routing_state(client.host)

    # --- the client routes the internet through the exit -----------------------------------
    node = start_join(mesh, "client", "--exit-node", "exit")
    node.wait_line(r"exit node: internet traffic via exit", 30)
    mesh.wait_links(timeout=30)
    assert f"{mesh.coord_host.address} " in our_routes(client.host) + " "  # coordinator bypass
    assert fetch(client.host, internet.url) == INTERNET_PAGE
    assert fetch(client.host, echo_url) == far_address  # the server sees the exit's uplink
    n = 4 << 20  # bulk both ways through the exit (TCP segments coalesced on each side)
    bulk = client.host.run([sys.executable, "-c", BULK, echo_url, str(n)], timeout=60).stdout
    lines = bulk.splitlines()
    assert lines[0] == f"download {n} True", bulk
    up = lines[1].split()
    assert up[1] == str(n) and up[2] == up[3], bulk
    assert "dev tm0" in (client.host.route_get(internet.address) or "")
    assert "dev tm0" not in (client.host.route_get(exit_peer.host.address) or "")  # bypass

    # mesh traffic stays direct: pings to "other" never pass through the exit
    exit_rx = exit_peer.status()["forwarder"].get("rx_packets", 0)
    other_rx = mesh.peers["other"].status()["forwarder"].get("rx_packets", 0)
    proc = client.host.run(
        ["ping", "-c", "20", "-i", "0.05", "-W", "1", mesh.peers["other"].mesh_ip], check=False
    )
    assert proc.returncode == 0, proc.stdout
    assert mesh.peers["other"].status()["forwarder"]["rx_packets"] - other_rx >= 20
    assert exit_peer.status()["forwarder"].get("rx_packets", 0) - exit_rx < 5
    assert mesh.ping("client", exit_peer.mesh_ip, count=1) is not None

    listed = json.loads(
        client.host.run(
            [sys.executable, "-m", "tunnelmesh", "peers", "--json"], env=mesh.env(client.home)
        ).stdout
    )
    flags = {p["name"]: p.get("allow_exit_traffic", False) for p in listed if not p["self"]}
    assert flags == {"exit": True, "other": False}
    # the exit's key is pinned in the client's context (a name can change hands, a key cannot)
    exit_id = next(p["peer_id"] for p in listed if p["name"] == "exit")
    contexts = json.loads((client.home / "contexts.json").read_text())["contexts"]
    assert [c["exit_pins"] for c in contexts.values()] == [{"exit": exit_id}]
    assert any(f"pinned to its key (peer ID {exit_id})" in line for line in node.lines)
    status = client.status()["exit"]
    assert status["state"] == "routed" and status["exit_node"] == "exit"

    # --- a clean stop restores the routing table exactly ----------------------------------
    mesh.stop_peer("client")
    assert routing_state(client.host) == before
    assert fetch(client.host, internet.url).startswith("failed")

    # --- a crash (SIGKILL) leaves bypass routes; the next start recovers --------------------
    node = start_join(mesh, "client", "--exit-node", "exit")
    node.wait_line(r"exit node: internet traffic via exit", 30)
    node.proc.kill()
    node.proc.wait(10)
    client.node = None
    assert our_routes(client.host) != ""  # left behind by the crash
    assert routing_state(client.host) != before
    node = start_join(mesh, "client", "--exit-node", "exit")
    node.wait_line(r"exit node: internet traffic via exit", 30)
    poll(lambda: fetch(client.host, internet.url) == INTERNET_PAGE, 20, "the page after restart")
    mesh.stop_peer("client")
    assert routing_state(client.host) == before

    # --- a peer that does not allow exit traffic is refused --------------------------------
    node = start_join(mesh, "client", "--exit-node", "other")
    node.wait_line(r"error: exit node 'other' does not allow exit traffic", 30)
    assert our_routes(client.host) == ""
    assert fetch(client.host, internet.url).startswith("failed")
    mesh.stop_peer("client")
    assert routing_state(client.host) == before

    # --- the exit: a crash leaves NAT and forwarding, the next start undoes them first, a stop
    # removes them ----------------------------------------------------------------------------
    def exit_settings() -> tuple[bool, str]:
        tables = exit_peer.host.run(["nft", "list", "tables"]).stdout
        forward = exit_peer.host.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
        return "tunnelmesh_exit" in tables, forward

    exit_node.proc.kill()
    exit_node.proc.wait(10)
    exit_peer.node = None
    assert exit_settings() == (True, "1")
    mesh.start_peer("exit")  # recovers (state file of the crash), then sets up again
    assert exit_settings() == (True, "1")
    mesh.stop_peer("exit")
    assert exit_settings() == (False, "0")
    assert not (exit_peer.home / "node.sock.state" / "exit-gateway.json").exists()
    lab.check_isolation()
