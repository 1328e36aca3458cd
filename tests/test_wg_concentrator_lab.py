"""The WireGuard concentrator end to end in the namespace lab (issue 13).

A coordinator and two joined peers, both concentrators (``wireguard.enabled`` in their
peer.yaml): ``conc`` (the first peer, so the admin) serves the phone, ``beta`` is the peer the
phone reaches (and serves a second client, to show clients of two concentrators reaching each
other). "The phone" is Debian's wireguard-go
and ``wg`` in its own namespace, configured from what ``tunnelmesh wg add`` prints, through
``wg-quick strip`` + ``wg setconf``. Everything is driven through the real CLI.

Needs root, /dev/net/tun and Debian's wireguard-go, wireguard-tools and iputils-ping.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tunnelmesh_udp")
pytest.importorskip("tunnelmesh_wg")

from tunnelmesh.testing.lab import Host, Lab
from tunnelmesh.testing.mesh import MeshLab, NodeProcess
from tunnelmesh_wg.labtools import Phone, parse_config, start_phone

pytestmark = pytest.mark.lab

WG_PORT = 51820


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: wireguard-go wireguard-tools)")


def _poll(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``condition()`` holds (at most ``timeout`` s); returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def mesh(module_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    """One mesh for the module's tests (each adds clients of its own names; the first lists
    the clients of a mesh the second has not added to yet: file order)."""
    _need("wireguard-go", "wg", "wg-quick", "ping")
    m = MeshLab(module_lab, tmp_path_factory.mktemp("conc"))
    try:
        for name in ("conc", "beta"):
            peer = m.add_peer(name)
            with (peer.home / "peer.yaml").open("a") as f:
                f.write(
                    "wireguard:\n  enabled: true\n"
                    f"  listen_port: {WG_PORT}\n"
                    f'  endpoint: "{peer.host.address}:{WG_PORT}"\n'
                )
        m.start_coordinator()
        m.start_peers(["conc", "beta"])  # the first peer: the admin
        m.wait_links(timeout=30)
        yield m
    finally:
        m.close()


def cli(
    mesh: MeshLab, peer: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``tunnelmesh ARGS`` as peer ``peer``'s user (its context), in its namespace."""
    p = mesh.peers[peer]
    proc: subprocess.CompletedProcess[str] = p.host.run(
        [sys.executable, "-m", "tunnelmesh", *args],
        env=mesh.env(p.home),
        check=check,
        timeout=60,
    )
    return proc


def ping(host: Host, target: str, count: int = 2) -> subprocess.CompletedProcess[str]:
    proc: subprocess.CompletedProcess[str] = host.run(
        ["ping", "-c", str(count), "-i", "0.2", "-W", "1", target],
        check=False,
        timeout=count + 15,
    )
    return proc


def reaches(host: Host, target: str, timeout: float = 20.0) -> str:
    """Ping until ``target`` answers (bounded); returns the address ping resolved."""
    resolved: list[str] = []

    def ok() -> bool:
        proc = ping(host, target, count=1)
        m = re.search(r"^PING \S+ \(([\d.]+)\)", proc.stdout, re.M)
        if proc.returncode == 0 and m:
            resolved.append(m.group(1))
            return True
        return False

    _poll(ok, timeout, f"{target} to answer")
    return resolved[-1]


def transfer(src: Host, dst: Host, address: str, nbytes: int, port: int) -> dict[str, Any]:
    """A TCP transfer of ``nbytes`` from ``src`` to ``address`` (on ``dst``); both digests."""
    sink = NodeProcess(
        "sink",
        dst.python(
            "-m", "tunnelmesh.testing.transfer", "sink", address, str(port), "--timeout", "60",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        ),
        None,
    )  # fmt: skip
    try:
        sink.wait_line("^ready", 20)
        out = src.run(
            [sys.executable, "-m", "tunnelmesh.testing.transfer", "send", address, str(port),
             "--bytes", str(nbytes), "--timeout", "60"],
            timeout=90,
        ).stdout  # fmt: skip
        got = sink.wait_line(r"received (\d+) sha256 (\w+)", 30)
    finally:
        sink.stop(5)
    sent = re.search(r"sent (\d+) sha256 (\w+)", out)
    assert sent is not None, out
    return {
        "sent": int(sent.group(1)),
        "received": int(got.group(1)),
        "sent_sha256": sent.group(2),
        "received_sha256": got.group(2),
    }


def tcp_connects(src: Host, address: str, port: int, timeout: float = 2.0) -> bool:
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(({address!r}, {port}), timeout={timeout}).close()\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('failed', e)\n"
    )
    return "connected" in src.run([sys.executable, "-c", code], timeout=30).stdout


def files_containing(roots: list[Path], needles: list[bytes]) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if any(n in data for n in needles):
                    found.append(str(path))
    return found


def add_phone(
    mesh: MeshLab, tmp_path: Path, name: str, *extra: str, concentrator: str = "conc"
) -> tuple[str, Host, Phone]:
    """``wg add NAME`` on the admin peer; a new host runs the printed config in wireguard-go."""
    config = cli(mesh, "conc", "wg", "add", name, "--concentrator", concentrator, *extra).stdout
    host = mesh.lab.add_host(name)
    phone = start_phone(host, tmp_path, ifname="tmph" + secrets.token_hex(4), config=config)
    return config, host, phone


def test_a_phone_reaches_the_mesh_through_the_concentrator(mesh: MeshLab, tmp_path: Path) -> None:
    conc, beta = mesh.peers["conc"], mesh.peers["beta"]
    config, host, phone = add_phone(mesh, tmp_path, "phone", "--qr", str(tmp_path / "phone.png"))
    try:
        keys = parse_config(config)
        private = keys["PrivateKey"][0]
        assert keys["DNS"] == [conc.mesh_ip]
        assert keys["Endpoint"] == [f"{conc.host.address}:{WG_PORT}"]
        phone_ip = phone.address.split("/")[0]

        # the phone reaches a peer that is not the concentrator, by mesh IP and by name
        reaches(host, beta.mesh_ip, timeout=20)
        assert phone.latest_handshake() > 0
        assert reaches(host, "beta.tunnelmesh") == beta.mesh_ip
        # a peer reaches the phone by its name
        got = mesh.ping("beta", "phone.tunnelmesh", count=1, deadline=20)
        assert got is not None and got[0] == phone_ip
        # 20 MiB phone -> beta, byte-exact
        r = transfer(host, beta.host, beta.mesh_ip, 20 << 20, 5401)
        assert r["sent"] == r["received"] == 20 << 20
        assert r["sent_sha256"] == r["received_sha256"]

        # a client of the other concentrator: the two clients reach each other
        _c, watch_host, watch = add_phone(mesh, tmp_path, "watch", concentrator="beta")
        try:
            assert reaches(host, "watch.tunnelmesh") == watch.address.split("/")[0]
            reaches(watch_host, phone_ip)
        finally:
            watch.stop()

        # the concentrator reports the handshake (heartbeat -> coordinator -> wg show)
        def shown() -> bool:
            status = json.loads(cli(mesh, "beta", "wg", "show", "phone", "--json").stdout)
            return bool((status.get("status") or {}).get("latest_handshake"))

        _poll(shown, 15, "the phone's handshake in `wg show`")

        # a filter rule on beta denying the phone (by name, as a source like a peer)
        sock = str(beta.control_socket)
        srv = beta.host.python(
            "-c",
            "import socket,sys\ns=socket.create_server((sys.argv[1],5402))\nprint('ready',flush=True)\n"
            "while True: s.accept()[0].close()\n",
            beta.mesh_ip,
            stdout=subprocess.PIPE,
        )
        try:
            assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
            assert tcp_connects(host, beta.mesh_ip, 5402)
            cli(mesh, "beta", "filter", "add", "--port", "5402", "--action", "deny",
                "--source-peer", "phone", "--socket", sock)  # fmt: skip
            assert not tcp_connects(host, beta.mesh_ip, 5402)
            assert tcp_connects(conc.host, beta.mesh_ip, 5402)  # the rule is about the phone
            cli(mesh, "beta", "filter", "remove", "--port", "5402", "--source-peer", "phone",
                "--socket", sock)  # fmt: skip
            assert tcp_connects(host, beta.mesh_ip, 5402)
        finally:
            srv.terminate()
            srv.wait(5)

        # disable: its traffic stops within 2 s; enable: back
        cli(mesh, "conc", "wg", "disable", "phone")
        time.sleep(2.0)
        assert ping(host, beta.mesh_ip, count=3).returncode != 0
        cli(mesh, "conc", "wg", "enable", "phone")
        reaches(host, beta.mesh_ip, timeout=40)  # wireguard-go re-handshakes (<= 15 s idle)

        # remove: gone from `wg list` and `peers`, and its traffic with it
        listed = json.loads(cli(mesh, "beta", "wg", "list", "--json").stdout)
        assert sorted(c["name"] for c in listed) == ["phone", "watch"]
        assert "phone" in cli(mesh, "beta", "peers").stdout
        cli(mesh, "conc", "wg", "remove", "phone")
        listed = json.loads(cli(mesh, "beta", "wg", "list", "--json").stdout)
        assert [c["name"] for c in listed] == ["watch"]
        assert "phone" not in cli(mesh, "beta", "peers").stdout
        time.sleep(2.0)
        assert ping(host, beta.mesh_ip, count=3).returncode != 0

        # the client's private key is nowhere in the coordinator's or the peers' state
        needles = [private.encode(), base64.b64decode(private)]
        roots = [mesh.workdir / d for d in ("coord-state", "coord-home", "conc", "beta")]
        assert files_containing(roots, needles) == []
        nodes = [mesh.coordinator, conc.node, beta.node]
        for node in nodes:
            assert node is not None
            assert not [line for line in node.lines if private in line], node.name
    finally:
        phone.stop()


def test_an_expired_client_cannot_handshake(mesh: MeshLab, tmp_path: Path) -> None:
    """A client with --expires works until then; afterwards its traffic stops, and the same
    config started again (a fresh handshake with the same key) gets no handshake."""
    beta = mesh.peers["beta"]
    expired = time.monotonic() + 21  # `wg add` sets expires_at = now + 20 s as it runs
    config, host, phone = add_phone(mesh, tmp_path, "tablet", "--expires", "20s")
    try:
        reaches(host, beta.mesh_ip, timeout=15)  # (set up well within its 20 s)
        assert phone.latest_handshake() > 0
        time.sleep(max(0.0, expired - time.monotonic()))
        _poll(lambda: ping(host, beta.mesh_ip, count=1).returncode != 0, 5, "the expiry")
    finally:
        phone.stop()
    again = start_phone(host, tmp_path, ifname="tmph" + secrets.token_hex(4), config=config)
    try:
        assert ping(host, beta.mesh_ip, count=3).returncode != 0
        time.sleep(6.0)  # wireguard-go retries its initiation every 5 s
        assert again.latest_handshake() == 0
        listed = {
            c["name"]: c for c in json.loads(cli(mesh, "beta", "wg", "list", "--json").stdout)
        }
        assert not listed["tablet"]["active"]
    finally:
        again.stop()
