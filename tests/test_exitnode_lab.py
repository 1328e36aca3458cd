"""Exit nodes end to end in the namespace lab: a client reaches the lab's "internet" only through
the exit peer's tunnel and masquerade; routes and NAT are undone on exit and after a crash."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")

from tunnelmesh.testing.lab import INTERNET_PAGE, Host, Lab, wait_for_line
from tunnelmesh_udp.labtools import KeyPair, start_static_node, stop_process

pytestmark = pytest.mark.lab

PORT = 51840
MESH = {"c": "10.206.0.1", "e": "10.206.0.2"}

# Applies the exit piece named by argv[1] with the JSON kwargs of argv[2], prints "applied",
# and undoes it on SIGTERM (a SIGKILL leaves it behind, like a crash).
HOLD = """
import json, signal, sys
from tunnelmesh.exit.system import ExitGateway, ExitRoutes
kind, kwargs = sys.argv[1], json.loads(sys.argv[2])
piece = ExitRoutes(**kwargs) if kind == "routes" else ExitGateway(**kwargs)
piece.apply()
print("applied", flush=True)
signal.signal(signal.SIGTERM, lambda *a: (piece.restore(), sys.exit(0)))
signal.pause()
"""

RECOVER = """
import json, sys
from tunnelmesh.exit.system import ExitGateway, ExitRoutes
kind, kwargs = sys.argv[1], json.loads(sys.argv[2])
piece = ExitRoutes(**kwargs) if kind == "routes" else ExitGateway(**kwargs)
piece.recover()
"""


def hold(host: Host, kind: str, **kwargs: object) -> subprocess.Popen[str]:
    proc = host.python("-c", HOLD, kind, json.dumps(kwargs), stdout=subprocess.PIPE)
    wait_for_line(proc, "applied", timeout=20)
    return proc


def curl_ok(host: Host, url: str) -> bool:
    code = (
        "import sys, urllib.request\n"
        "try:\n"
        "    print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode(), end='')\n"
        "except OSError as exc:\n"
        "    print('failed', exc)\n"
    )
    out = host.run([sys.executable, "-c", code, url], timeout=30).stdout
    return out == INTERNET_PAGE


def test_exit_node_routes_and_masquerade(lab: Lab, tmp_path: Path) -> None:
    c = lab.add_host("c")  # the client, on the wan
    e = lab.add_host("e")  # the exit, on the wan and on a LAN behind a router to the "internet"
    inet = lab.add_switch("inet", "198.51.100.0/24")  # not private: an exit forwards there
    router = lab.add_nat("router", outside=inet)
    lab.connect(e, router.inside)
    internet = lab.add_internet(switch=inet)
    assert c.route_get(internet.address) is None  # only the exit can get there

    keys = {"c": KeyPair(), "e": KeyPair()}
    nodes = [
        start_static_node(
            c,
            tmp_path,
            name="c",
            key=keys["c"],
            address=f"{MESH['c']}/24",
            listen_port=PORT,
            peers=[
                {
                    "name": "e",
                    "public_key": keys["e"].public_b64,
                    "endpoint": f"{e.address}:{PORT}",
                    "allowed_ips": [f"{MESH['e']}/32", "0.0.0.0/0"],  # the exit: everything
                }
            ],
        ),
        start_static_node(
            e,
            tmp_path,
            name="e",
            key=keys["e"],
            address=f"{MESH['e']}/24",
            listen_port=PORT,
            peers=[
                {
                    "name": "c",
                    "public_key": keys["c"].public_b64,
                    "endpoint": f"{c.address}:{PORT}",
                    "allowed_ips": [f"{MESH['c']}/32"],
                }
            ],
        ),
    ]
    try:
        assert c.ping(MESH["e"], count=2, timeout=2)
        routes_kw = {"tun": "tm0", "bypass": [e.address]}
        gateway_kw = {
            "mesh_cidr": "10.206.0.0/24",
            "tun": "tm0",
            "state_dir": str(tmp_path / "e-state"),
        }

        client = hold(c, "routes", **routes_kw)
        table = c.run(["ip", "route", "show", "proto", "211"]).stdout
        assert "0.0.0.0/1 dev tm0" in table and "128.0.0.0/1 dev tm0" in table
        assert f"{e.address} dev" in table  # the bypass keeps the tunnel off the tunnel
        assert not curl_ok(c, internet.url)  # routed to the exit, but the exit does not NAT yet

        gateway = hold(e, "gateway", **gateway_kw)
        assert "masquerade" in e.run(["nft", "list", "table", "ip", "tunnelmesh_exit"]).stdout
        assert curl_ok(c, internet.url)
        assert c.ping(MESH["e"], count=1, timeout=2)  # mesh traffic still direct

        # Clean exit: everything undone.
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(10)
        client.send_signal(signal.SIGTERM)
        client.wait(10)
        assert c.run(["ip", "route", "show", "proto", "211"]).stdout.strip() == ""
        assert e.run(["nft", "list", "tables"]).stdout.count("tunnelmesh_exit") == 0
        assert e.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"
        assert not curl_ok(c, internet.url)

        # A crash (SIGKILL) leaves routes and NAT; recovery removes them.
        client = hold(c, "routes", **routes_kw)
        gateway = hold(e, "gateway", **gateway_kw)
        assert curl_ok(c, internet.url)
        for proc in (client, gateway):
            proc.kill()
            proc.wait(10)
        assert c.run(["ip", "route", "show", "proto", "211"]).stdout.strip() != ""
        c.run([sys.executable, "-c", RECOVER, "routes", json.dumps(routes_kw)])
        e.run([sys.executable, "-c", RECOVER, "gateway", json.dumps(gateway_kw)])
        assert c.run(["ip", "route", "show", "proto", "211"]).stdout.strip() == ""
        assert e.run(["nft", "list", "tables"]).stdout.count("tunnelmesh_exit") == 0
        assert e.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"
        assert not (tmp_path / "e-state" / "exit-gateway.json").exists()
        lab.check_isolation()
    finally:
        for node in nodes:
            stop_process(node)
