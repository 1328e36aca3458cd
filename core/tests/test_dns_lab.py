"""The resolver in the namespace lab: `dig` from another host, forwarding to a DNS server on the
lab's "internet" host (dnsmasq), a peer joining live, and garbage that must not stop it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from tunnelmesh.testing.lab import Host, Lab, wait_for_line

PEERS = {f"peer{i}": f"10.42.0.{i + 2}" for i in range(20)}

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (apt-get install dnsutils)"),
    pytest.mark.skipif(
        shutil.which("dnsmasq") is None, reason="needs dnsmasq (apt-get install dnsmasq-base)"
    ),
]


def dig(client: Host, server: str, name: str, *extra: str) -> list[str]:
    out = client.run(
        ["dig", f"@{server}", "+short", "+time=1", "+tries=2", *extra, name], timeout=15
    ).stdout
    return out.split()


def start_dnsmasq(host: Host) -> subprocess.Popen[str]:
    proc = host.popen(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={host.address}",
            "--port=53",
            "--user=root",
            "--pid-file=",
            "--address=/outside.example/192.0.2.77",
            "--log-facility=-",
        ],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = host.run(
            ["dig", f"@{host.address}", "+short", "+time=1", "+tries=1", "outside.example"],
            check=False,
            timeout=10,
        )
        if probe.stdout.strip() == "192.0.2.77":
            return proc
        time.sleep(0.1)
    raise AssertionError("dnsmasq did not come up")


def test_dig_resolves_every_peer_forwards_and_sees_joins(lab: Lab) -> None:
    internet = lab.add_internet()
    start_dnsmasq(internet)
    resolver_host = lab.add_host("res")
    client = lab.add_host("cli")
    records = [f"--record={name}={ip}" for name, ip in PEERS.items()]
    proc = resolver_host.python(
        "-m",
        "tunnelmesh",
        "dns",
        "serve",
        f"--listen={resolver_host.address}:53",
        f"--upstream={internet.address}",
        "--feed=-",
        *records,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    wait_for_line(proc, "ready", timeout=20)
    server = resolver_host.address

    for name, ip in PEERS.items():
        assert dig(client, server, f"{name}.tunnelmesh") == [ip]
    assert dig(client, server, "peer3.tm", "+tcp") == [PEERS["peer3"]]
    assert dig(client, server, PEERS["peer5"], "-x") == ["peer5.tunnelmesh."]
    status = client.run(["dig", f"@{server}", "+time=1", "nobody.tunnelmesh"], timeout=15).stdout
    assert "status: NXDOMAIN" in status

    # Forwarded to the lab's internet DNS server.
    assert dig(client, server, "www.outside.example") == ["192.0.2.77"]

    # A peer joins: resolvable within 2 s of the record arriving.
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"set": {"newcomer": ["10.42.0.99"]}}) + "\n")
    proc.stdin.flush()
    joined = time.monotonic()
    while dig(client, server, "newcomer.tunnelmesh") != ["10.42.0.99"]:
        assert time.monotonic() - joined < 2.0, "a joining peer was not resolvable within 2 s"
        time.sleep(0.05)

    # Malformed and oversized queries: no crash, the resolver keeps serving.
    junk = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for n in (0, 1, 11, 12, 40, 300, 1500, 4000, 60000):\n"
        "    for _ in range(20):\n"
        f"        s.sendto(os.urandom(n), ({server!r}, 53))\n"
        f"s.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01' + b'\\x00' * 6 + b'\\x3fabc', ({server!r}, 53))\n"
        "s.settimeout(2)\n"
        "for _ in range(500):\n"  # earlier garbage may get FORMERR answers too
        "    reply = s.recv(512)\n"
        "    if reply[:2] == b'\\x12\\x34':\n"
        "        print(reply[:4].hex()); break\n"
    )
    out = client.run(["python3", "-c", junk], timeout=30).stdout.strip()
    assert out.startswith("1234") and int(out[4:], 16) & 0xF == 1  # FORMERR to the last one
    assert dig(client, server, "peer0.tunnelmesh") == [PEERS["peer0"]]
    assert proc.poll() is None


AUTO_WITHOUT_RESOLVED = """
import asyncio, sys
from tunnelmesh.config import DnsConfig
from tunnelmesh.dns import DnsService
from tunnelmesh.dns.system import SystemDns

async def main():
    conf = sys.argv[1]
    cfg = DnsConfig()  # the defaults: listen 127.0.0.53:5353, system auto
    system = SystemDns(cfg.listen, mode=cfg.system, resolvectl=None, resolv_conf=conf,
                       backup_dir=sys.argv[2])  # resolvectl=None: no systemd-resolved
    dns = DnsService.from_config(cfg, system=system, networks=["10.42.0.0/16"])
    dns.backend.set("alpha", ["10.42.0.2"])
    await dns.start()
    print("mode", system.applied, "serving %s:%d" % dns.server.address, flush=True)
    await asyncio.sleep(float(sys.argv[3]))
    await dns.aclose()
    print("stopped", flush=True)

asyncio.run(main())
"""


def test_auto_without_resolved_makes_names_work_with_the_defaults(lab: Lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With the default listen (port 5353, for resolved's stub) and ``system: auto`` on a host
    without systemd-resolved, the resolver takes port 53 and resolv.conf points at it."""
    host = lab.add_host("node")
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.1\n")
    proc = host.python(
        "-c", AUTO_WITHOUT_RESOLVED, str(conf), str(tmp_path / "state"), "6",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    line = wait_for_line(proc, "mode", timeout=20)
    assert line.split() == ["mode", "resolv.conf", "serving", "127.0.0.53:53"], line
    assert conf.read_text().splitlines()[-1] == "nameserver 127.0.0.53"
    assert dig(host, "127.0.0.53", "alpha.tunnelmesh") == ["10.42.0.2"]
    wait_for_line(proc, "stopped", timeout=20)  # the script stops by itself after 6 s
    assert conf.read_text() == "nameserver 192.0.2.1\n"
