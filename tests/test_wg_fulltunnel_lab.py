"""A full-tunnel WireGuard client (``tunnelmesh wg add --full-tunnel EXIT``) in the namespace lab.

A coordinator and three joined peers: ``conc`` (a concentrator, the admin), ``exit``
(``allow_exit_traffic``) and ``other`` (a plain peer). The "internet" host sits behind a NAT
router that only the exit's LAN reaches (as in test_e2e_exit_lab.py); no namespace has a way to
the host's network. The phone (Debian's wireguard-go and ``wg``, configured from the printed
config through ``wg-quick strip`` + ``wg setconf``) gets its default route into its WireGuard
interface inside its own namespace only. Checked: the phone fetches a page from the internet
host through conc -> exit, and the internet host sees the exit's uplink; mesh traffic stays on
the mesh; a packet with an outside source address sent toward the phone from the exit reaches
it, the same packet from ``other`` (no exit of the phone) is dropped at the concentrator as
spoofed; a mesh-only client still cannot reach the internet (dropped and counted).

Needs root, /dev/net/tun, nftables and Debian's wireguard-go, wireguard-tools and iputils-ping.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")
pytest.importorskip("tunnelmesh_wg")

from test_e2e_exit_lab import ECHO, ECHO_PORT, fetch, poll
from test_wg_concentrator_lab import WG_PORT, _need, cli, reaches
from tunnelmesh.testing.lab import INTERNET_PAGE, Host, Lab, wait_for_line
from tunnelmesh.testing.mesh import MeshLab, NodeProcess
from tunnelmesh_wg.labtools import parse_config, start_phone

pytestmark = pytest.mark.lab

SPOOF_PORT = 5499
# Sends one UDP datagram with a forged IPv4 source (a raw socket, IP_HDRINCL; the kernel fills
# in the lengths and the IP checksum; UDP checksum 0 = none).
SPOOF = """
import socket, struct, sys
src, dst, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + udp, (dst, 0))
"""
# Prints every datagram it receives on the port as "got <source> <payload>".
LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    print("got", addr[0], data.decode(), flush=True)
"""


@pytest.fixture
def mesh(lab: Lab, tmp_path: Path) -> Iterator[MeshLab]:
    _need("wireguard-go", "wg", "wg-quick", "ping", "nft")
    m = MeshLab(lab, tmp_path)
    try:
        yield m
    finally:
        m.close()


def forwarder_stat(mesh: MeshLab, name: str, key: str) -> int:
    return int(mesh.peers[name].status()["forwarder"].get(key, 0))


def test_a_full_tunnel_phone_reaches_the_internet_through_its_exit(
    lab: Lab, mesh: MeshLab, tmp_path: Path
) -> None:
    for name in ("conc", "exit", "other"):
        mesh.add_peer(name)
    conc = mesh.peers["conc"]
    with (conc.home / "peer.yaml").open("a") as f:
        f.write(
            "wireguard:\n  enabled: true\n"
            f"  listen_port: {WG_PORT}\n"
            f'  endpoint: "{conc.host.address}:{WG_PORT}"\n'
        )
    exit_peer = mesh.peers["exit"]
    with (exit_peer.home / "peer.yaml").open("a") as f:
        f.write("allow_exit_traffic: true\n")
    inet = lab.add_switch("inet", "198.51.100.0/24")
    router = lab.add_nat("router", outside=inet)
    lab.connect(exit_peer.host, router.inside)
    internet = lab.add_internet(switch=inet)
    echo = internet.python("-c", ECHO, internet.address, str(ECHO_PORT), stdout=subprocess.PIPE)
    wait_for_line(echo, "ready", timeout=15)
    echo_url = f"http://{internet.address}:{ECHO_PORT}/"

    mesh.start_coordinator()
    mesh.start_peer("conc")  # the first peer: the admin
    exit_node = mesh.start_peer("exit").node
    assert exit_node is not None
    exit_node.wait_line("exit node: forwarding and masquerading", 10)
    mesh.start_peer("other")
    mesh.wait_links(timeout=30)
    for name in ("conc", "other"):  # only the exit's LAN leads to the internet host
        assert mesh.peers[name].host.route_get(internet.address) is None

    config = cli(mesh, "conc", "wg", "add", "phone", "--full-tunnel", "exit").stdout
    assert "AllowedIPs = 0.0.0.0/0" in config
    host: Host = lab.add_host("phone")
    assert host.route_get(internet.address) is None
    phone = start_phone(
        host, tmp_path, ifname="tmph" + secrets.token_hex(4), config=config, full_tunnel=True
    )
    listener: NodeProcess | None = None
    try:
        phone_ip = phone.address.split("/")[0]
        assert f"dev {phone.ifname}" in (host.route_get(internet.address) or "")
        assert f"dev {phone.ifname}" not in (host.route_get(conc.host.address) or "")

        # the mesh, as before
        reaches(host, mesh.peers["other"].mesh_ip, timeout=20)
        # the internet through the exit: the page, and the server sees the exit's uplink
        poll(lambda: fetch(host, internet.url) == INTERNET_PAGE, 20, "the page via the exit")
        assert fetch(host, echo_url) == router.outside_address
        relayed = forwarder_stat(mesh, "conc", "relayed")
        assert relayed > 0
        reaches(host, internet.address, timeout=10)

        # an outside source toward the phone: accepted from its exit, spoofed from anyone else
        listener = NodeProcess(
            "listener",
            host.python("-c", LISTEN, str(SPOOF_PORT), stdout=subprocess.PIPE),
            None,
        )
        listener.wait_line("^ready", 15)

        def spoof(sender: str, payload: str) -> None:
            mesh.peers[sender].host.run(
                [sys.executable, "-c", SPOOF, "203.0.113.9", phone_ip, str(SPOOF_PORT), payload],
                timeout=30,
            )

        spoofed = forwarder_stat(mesh, "conc", "dropped_spoofed")
        for i in range(3):
            spoof("other", f"from-other-{i}")
        poll(
            lambda: forwarder_stat(mesh, "conc", "dropped_spoofed") >= spoofed + 3,
            10,
            "the concentrator to drop the spoofed packets",
        )
        spoof("exit", "from-exit")  # after: UDP over one path keeps its order
        got = listener.wait_line(r"^got (\S+) (\S+)", 10)
        assert (got.group(1), got.group(2)) == ("203.0.113.9", "from-exit")
        assert not any("from-other" in line for line in listener.lines)

        # a mesh-only client of the same concentrator that tries anyway (its own wg told to
        # send the internet host's address to the concentrator): no way out, dropped and counted
        plain_config = cli(mesh, "conc", "wg", "add", "laptop").stdout
        plain_host = lab.add_host("laptop")
        plain = start_phone(
            plain_host, tmp_path, ifname="tmph" + secrets.token_hex(4), config=plain_config
        )
        try:
            reaches(plain_host, mesh.peers["other"].mesh_ip, timeout=20)
            not_exit = forwarder_stat(mesh, "conc", "dropped_not_exit")
            assert plain_host.route_get(internet.address) is None
            keys = parse_config(plain_config)
            allowed = ",".join([*keys["AllowedIPs"], f"{internet.address}/32"])
            plain_host.run(
                ["wg", "set", plain.ifname, "peer", keys["PublicKey"][0], "allowed-ips", allowed]
            )
            plain_host.run(["ip", "route", "add", internet.address, "dev", plain.ifname])
            assert fetch(plain_host, internet.url).startswith("failed")
            assert forwarder_stat(mesh, "conc", "dropped_not_exit") > not_exit
        finally:
            plain.stop()
    finally:
        if listener is not None:
            listener.stop(5)
        phone.stop()
    lab.check_isolation()
