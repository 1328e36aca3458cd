"""Attacks on the peer side of the trust model, refused, with real `serve`/`join` processes in
the namespace lab (issue 11). Unit versions: core/tests/test_attacks_policy.py.

Exit pinning: a client pins its exit's key; when the exit has left, an admin has released its
name and another key registers under it as an exit, the client refuses it with the reason
(also after a restart of the client) and routes nothing to it.

The exit sits on a LAN (10.77.n.0/24) behind a router to the "internet" (198.51.100.0/24).
On that LAN: a file server and, routed by the exit, the cloud metadata address
169.254.169.254. A client that routes its traffic through the exit reaches the internet host,
but not the LAN host, not 169.254.169.254 and not the exit's own LAN address, while the exit
itself reaches all of them (so what stops the client is the exit's forward chain). With
`exit.allow_lan: true` the LAN is reachable again (the checks can fail). With
`exit.allowed_peers` listing the client's key it gets out; listing only another key, the exit
drops its packets. Stopping the exit removes its table and puts `ip_forward` back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")

from test_e2e_exit_lab import fetch, our_routes, poll, start_join
from tunnelmesh.testing.lab import INTERNET_PAGE, Lab, wait_for_line
from tunnelmesh.testing.mesh import MeshLab, NodeProcess

pytestmark = pytest.mark.lab

LAN_PAGE = "the NAS on the exit's LAN\n"
METADATA = "169.254.169.254"

# A web server on every address of its host (argv[1]: port, argv[2]: the page).
WEB = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[2].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
server = http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H)
print("ready", flush=True)
server.serve_forever()
"""


@pytest.fixture
def mesh(lab: Lab, tmp_path: Path) -> Iterator[MeshLab]:
    m = MeshLab(lab, tmp_path)
    try:
        yield m
    finally:
        m.close()


def test_an_exit_client_reaches_the_internet_but_not_the_exits_lan(lab: Lab, mesh: MeshLab) -> None:
    for name in ("exit", "client"):
        mesh.add_peer(name)
    exit_peer, client = mesh.peers["exit"], mesh.peers["client"]
    config = exit_peer.home / "peer.yaml"
    base = config.read_text()
    config.write_text(base + "allow_exit_traffic: true\n")
    inet = lab.add_switch("inet", "198.51.100.0/24")
    router = lab.add_nat("router", outside=inet)
    exit_lan_dev = lab.connect(exit_peer.host, router.inside)
    exit_lan_ip = exit_peer.host.addresses[exit_lan_dev]
    internet = lab.add_internet(switch=inet)
    nas = lab.add_host("nas", switch=router.inside)
    nas.run(["ip", "addr", "add", f"{METADATA}/32", "dev", nas.dev])
    exit_peer.host.run(["ip", "route", "add", f"{METADATA}/32", "via", nas.address])
    for host, port, page in ((nas, 80, LAN_PAGE), (exit_peer.host, 8088, "the exit itself\n")):
        wait_for_line(host.python("-c", WEB, str(port), page, stdout=subprocess.PIPE), "ready", 15)
    lan_url, metadata_url = f"http://{nas.address}/", f"http://{METADATA}/latest/meta-data/"
    # The exit itself reaches everything: what stops the client below is the exit's chain.
    assert fetch(exit_peer.host, lan_url) == LAN_PAGE
    assert fetch(exit_peer.host, metadata_url) == LAN_PAGE
    assert fetch(exit_peer.host, internet.url) == INTERNET_PAGE
    assert client.host.route_get(nas.address) is None  # only via the exit

    mesh.start_coordinator()
    mesh.start_peer("exit")
    node = start_join(mesh, "client", "--exit-node", "exit")
    node.wait_line(r"exit node: internet traffic via exit", 30)
    mesh.wait_links(timeout=30)
    assert fetch(client.host, internet.url) == INTERNET_PAGE  # the internet still answers
    assert fetch(client.host, lan_url).startswith("failed")  # the exit's LAN: dropped
    assert fetch(client.host, metadata_url).startswith("failed")  # 169.254.169.254: dropped
    # the exit's own LAN address is no way in; its mesh address is (mesh traffic)
    assert fetch(client.host, f"http://{exit_lan_ip}:8088/").startswith("failed")
    assert fetch(client.host, f"http://{exit_peer.mesh_ip}:8088/") == "the exit itself\n"
    assert fetch(client.host, internet.url) == INTERNET_PAGE  # and still nothing broken
    table = exit_peer.host.run(["nft", "list", "table", "ip", "tunnelmesh_exit"]).stdout
    assert "policy drop" in table and "@blocked" in table

    # exit.allow_lan: true opens the LAN (so the failures above were the chain's doing)
    mesh.stop_peer("exit")
    assert "tunnelmesh_exit" not in exit_peer.host.run(["nft", "list", "tables"]).stdout
    assert exit_peer.host.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"
    config.write_text(base + "allow_exit_traffic: true\nexit:\n  allow_lan: true\n")
    mesh.start_peer("exit")
    poll(lambda: fetch(client.host, lan_url) == LAN_PAGE, 30, "the LAN with allow_lan")
    assert fetch(client.host, metadata_url) == LAN_PAGE
    assert fetch(client.host, internet.url) == INTERNET_PAGE

    # exit.allowed_peers: by key. The client's key listed: it gets out; another key only: its
    # packets are dropped by the exit (counted), the internet no longer answers it.
    listed = json.loads(
        client.host.run(
            [sys.executable, "-m", "tunnelmesh", "peers", "--json"], env=mesh.env(client.home)
        ).stdout
    )
    client_id = next(p["peer_id"] for p in listed if p["name"] == "client")
    exit_mesh_url = f"http://{exit_peer.mesh_ip}:8088/"
    for allowed, works in (([client_id], True), (["0123456789abcdef"], False)):
        mesh.stop_peer("exit")
        config.write_text(
            base + f"allow_exit_traffic: true\nexit:\n  allowed_peers: {json.dumps(allowed)}\n"
        )
        mesh.start_peer("exit")
        mesh.wait_links(timeout=30)
        if works:
            poll(lambda: fetch(client.host, internet.url) == INTERNET_PAGE, 30, "allowed client")
            assert exit_peer.status()["exit"]["clients"] == ["client"]
        else:
            # the exit is up and linked (mesh traffic passes) ...
            poll(lambda: fetch(client.host, exit_mesh_url) == "the exit itself\n", 30, "exit")
            # ... and the client routes through it again (until then its packets stop at the
            # client, and the exit has nothing to count)
            poll(lambda: client.status()["exit"]["state"] == "routed", 30, "client routed")
            # ... but drops the client's internet traffic (the guard counts it)
            assert fetch(client.host, internet.url).startswith("failed")
            status = exit_peer.status()["exit"]
            assert status["clients"] == [] and status["dropped_not_exit"] > 0
    mesh.stop_peer("client")
    mesh.stop_peer("exit")
    assert "tunnelmesh_exit" not in exit_peer.host.run(["nft", "list", "tables"]).stdout
    lab.check_isolation()


def test_a_peer_posing_under_the_exits_name_is_refused_by_its_client(mesh: MeshLab) -> None:
    for name in ("ops", "exit", "client", "imp"):
        mesh.add_peer(name)
    exit_peer, client, imp = mesh.peers["exit"], mesh.peers["client"], mesh.peers["imp"]
    with (exit_peer.home / "peer.yaml").open("a") as f:
        f.write("allow_exit_traffic: true\n")
    config = imp.home / "peer.yaml"  # the impostor: another key, the exit's name
    config.write_text(
        config.read_text().replace("name: imp\n", "name: exit\n") + "allow_exit_traffic: true\n"
    )
    mesh.start_coordinator()
    mesh.start_peer("ops")  # the first peer: the mesh's admin
    mesh.start_peer("exit")
    node = start_join(mesh, "client", "--exit-node", "exit")
    node.wait_line(r"exit node: internet traffic via exit", 30)
    pinned = client.status()["exit"]["exit_peer_id"]
    assert pinned and any(f"pinned to its key (peer ID {pinned})" in x for x in node.lines)

    # the exit leaves; an admin releases its name; another key registers it, as an exit
    mesh.stop_peer("exit")
    admin = mesh.peers["ops"]
    for cmd in (["delete", "exit"], ["release", "exit"]):
        admin.host.run(
            [sys.executable, "-m", "tunnelmesh", "peers", *cmd], env=mesh.env(admin.home)
        )
    mark = len(node.lines)
    proc = imp.host.python(
        "-m", "tunnelmesh", "-c", str(config), "join", "--server", mesh.server_url,
        "--name", "exit", env=mesh.env(imp.home),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    imp.node = NodeProcess("imp", proc, mesh.echo)
    imp.node.wait_line("node up:", 60)
    line = node.wait_line(r"error: exit node 'exit' now has another key", 30, mark).string
    assert pinned in line and "posing" in line and "--exit-node" in line
    status = client.status()["exit"]
    assert status["state"] == "wrong_key" and status["exit_peer_id"] == pinned
    poll(lambda: our_routes(client.host) == "", 10, "the client's exit routes removed")

    # a restart of the client keeps the pin: refused from the start, never routed
    mesh.stop_peer("client")
    node = start_join(mesh, "client", "--exit-node", "exit")
    node.wait_line(r"error: exit node 'exit' now has another key", 30)
    assert not any("internet traffic via" in x for x in node.lines)
    assert our_routes(client.host) == ""
