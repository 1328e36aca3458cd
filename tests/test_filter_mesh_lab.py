"""The packet filter end to end through TUN: two tunnelmesh-udp nodes in the namespace lab, the
filter in the forwarder, and `tunnelmesh filter` talking to node b's control socket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunnelmesh_udp")

from tunnelmesh.errors import LabError
from tunnelmesh.testing.lab import Host, Lab, wait_for_line
from tunnelmesh_udp.labtools import KeyPair, stop_process

pytestmark = pytest.mark.lab

PORT = 51830
MESH = {"a": "10.204.0.1", "b": "10.204.0.2"}

# A tunnelmesh-udp static node whose forwarder runs a FilterService's engine, with the
# service's control socket at argv[2]; argv[3] is the peer.yaml-like filter section (JSON).
NODE = """
import asyncio, json, sys
import tunnelmesh_udp.static as static
from tunnelmesh.config import FilterConfig
from tunnelmesh.filter import FilterService
import msgspec

config = static.load_static_config(sys.argv[1])
service = FilterService.from_config(
    msgspec.convert(json.loads(sys.argv[3]), FilterConfig), local_name=sys.argv[4]
)

class FilteredForwarder(static.Forwarder):
    def __init__(self, fd, routes, filters=(), **kw):
        super().__init__(fd, routes, [service.engine], **kw)

static.Forwarder = FilteredForwarder

async def main():
    await service.start(socket_path=sys.argv[2])
    try:
        await static.run_static(config)
    finally:
        await service.aclose()

asyncio.run(main())
"""

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(data, addr)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recvfrom(2048)[0].decode())
except TimeoutError:
    print("timeout")
"""

TCP_ECHO = """
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = srv.accept()
f = conn.makefile("rwb", buffering=0)
for line in f:
    f.write(line)
"""

# Reads lines on stdin, sends each on one TCP connection, prints each echoed line.
TCP_CLIENT = """
import socket, sys, threading
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.settimeout(None)
print("connected", flush=True)
def pump():
    for line in c.makefile("rb"):
        print("echo " + line.decode().strip(), flush=True)
threading.Thread(target=pump, daemon=True).start()
for line in sys.stdin:
    c.sendall(line.encode())
"""


def start_node(
    host: Host,
    tmp: Path,
    name: str,
    keys: dict[str, KeyPair],
    hosts: dict[str, Host],
    flt: dict[str, Any],
) -> tuple[subprocess.Popen[str], Path]:
    other = "b" if name == "a" else "a"
    config = {
        "interface": "tm0",
        "address": f"{MESH[name]}/24",
        "listen": f"0.0.0.0:{PORT}",
        "private_key": keys[name].private_b64,
        "peers": [
            {
                "name": other,
                "public_key": keys[other].public_b64,
                "endpoint": f"{hosts[other].address}:{PORT}",
                "allowed_ips": [f"{MESH[other]}/32"],
            }
        ],
    }
    cfg = tmp / f"{name}.json"
    cfg.write_text(json.dumps(config))
    sock = tmp / f"{name}.sock"
    proc = host.python(
        "-c",
        NODE,
        str(cfg),
        str(sock),
        json.dumps(flt),
        name,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for_line(proc, "tunnelmesh-udp ready", timeout=30)
    return proc, sock


def cli(host: Host, sock: Path, *args: str) -> str:
    return host.run(
        [sys.executable, "-m", "tunnelmesh", "filter", *args, "--socket", str(sock)], timeout=30
    ).stdout


def udp_ask(host: Host, address: str, port: int, timeout: float = 1.0) -> str:
    return host.run(
        [sys.executable, "-c", UDP_ASK, address, str(port), str(timeout)], timeout=30
    ).stdout.strip()


def test_filter_through_tun(lab: Lab, tmp_path: Path) -> None:
    hosts = {n: lab.add_host(n) for n in ("a", "b")}
    keys = {n: KeyPair() for n in hosts}
    a, b = hosts["a"], hosts["b"]
    node_a, _ = start_node(a, tmp_path, "a", keys, hosts, {"default_deny": False})
    node_b, sock_b = start_node(
        b,
        tmp_path,
        "b",
        keys,
        hosts,
        {"default_deny": True, "allow_icmp": True, "rules": [{"port": 8080, "source_peer": "a"}]},
    )
    try:
        assert a.ping(MESH["b"], count=2, timeout=2)  # ICMP allowed by config

        # Default deny: a's UDP to b is dropped until a runtime rule allows it.
        echo_b = b.python("-c", UDP_ECHO, MESH["b"], "9999", stdout=subprocess.PIPE)
        wait_for_line(echo_b, "ready")
        assert udp_ask(a, MESH["b"], 9999) == "timeout"
        out = cli(
            b,
            sock_b,
            "add",
            "--port",
            "9999",
            "--protocol",
            "udp",
            "--source-peer",
            "a",
            "--ttl",
            "600",
        )
        assert "allow udp/9999 from a" in out
        assert udp_ask(a, MESH["b"], 9999) == "hello"

        # UDP replies to b's own queries pass b's default deny (stateful).
        echo_a = a.python("-c", UDP_ECHO, MESH["a"], "7777", stdout=subprocess.PIPE)
        wait_for_line(echo_a, "ready")
        assert udp_ask(b, MESH["a"], 7777) == "hello"

        # A live TCP flow (allowed by the config layer) is cut by a runtime deny, and resumes
        # when the deny is removed.
        srv = b.python("-c", TCP_ECHO, MESH["b"], "8080", stdout=subprocess.PIPE)
        wait_for_line(srv, "ready")
        client = a.python(
            "-c", TCP_CLIENT, MESH["b"], "8080", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        wait_for_line(client, "connected")
        assert client.stdin is not None
        client.stdin.write("one\n")
        client.stdin.flush()
        wait_for_line(client, "echo one", timeout=10)
        cli(b, sock_b, "add", "--port", "8080", "--action", "deny", "--source-peer", "a")
        client.stdin.write("two\n")
        client.stdin.flush()
        with pytest.raises(LabError):  # no echo while the deny is in place
            wait_for_line(client, "echo two", timeout=2)
        listing = json.loads(cli(b, sock_b, "list", "--json"))
        deny = next(r for r in listing["rules"] if r["action"] == "deny")
        assert deny["denied"] > 0
        cli(b, sock_b, "remove", "--port", "8080", "--source-peer", "a")
        wait_for_line(client, "echo two", timeout=20)  # TCP retransmits get through again

        counters = {
            (r["layer"], r["port"]): r
            for r in json.loads(cli(b, sock_b, "list", "--json"))["rules"]
        }
        assert counters[("config", 8080)]["allowed"] > 0
        assert counters[("runtime", 9999)]["allowed"] > 0
        assert listing["default_denied"] > 0
    finally:
        for proc in (node_a, node_b):
            stop_process(proc)
