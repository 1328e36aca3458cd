"""The control plane in the namespace lab: a coordinator and peers in separate namespaces.

Needs root, /dev/net/tun and iproute2/nftables (skipped otherwise); the STUN test also needs
``turnutils_stunclient`` (Debian package ``coturn``; its server is never started).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tunnelmesh.testing.lab import Host, Lab, wait_for_line

TOKEN = "lab-token-0123456789abcdef0123"
MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TUNNELMESH_HOME=str(home),
        TUNNELMESH_TOKEN=TOKEN,
        TUNNELMESH_NO_TRUST="1",
        TUNNELMESH_LOAD_PLUGINS="",
        PYTHONUNBUFFERED="1",
    )
    env.pop("TUNNELMESH_CONFIG", None)
    return env


def write_config(tmp_path: Path, coord: Host) -> Path:
    cfg = tmp_path / "server.yaml"
    cfg.write_text(
        f'auth_token: "{TOKEN}"\n'
        f'listen: "{coord.address}:8443"\n'
        f'stun_listen: "{coord.address}:3478"\n'
        f'data_dir: "{tmp_path / "state"}"\n'
        "heartbeat_interval: 1s\n"
        "join_mesh:\n"
        "  name: coord\n"
        f'  private_key: "{tmp_path / "coord-key"}"\n'
    )
    return cfg


def start_coordinator(coord: Host, cfg: Path, home: Path) -> subprocess.Popen[str]:
    log = open(home.parent / f"{home.name}-serve.log", "a")  # noqa: SIM115 - kept for the process
    proc = coord.python(
        "-c", MAIN, "serve", "-c", str(cfg), env=env_for(home), stdout=subprocess.PIPE, stderr=log
    )
    log.close()
    wait_for_line(proc, "coordinator listening", timeout=30)
    return proc


def start_peer(host: Host, coord: Host, home: Path) -> tuple[subprocess.Popen[str], str]:
    proc = host.python(
        "-c",
        MAIN,
        "join",
        "--server",
        f"{coord.address}:8443",
        "--name",
        host.name,
        env=env_for(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    line = wait_for_line(proc, "joined", timeout=30)
    m = re.search(r"mesh IP (\S+),", line)
    assert m, line
    return proc, m.group(1)


def peers_json(host: Host, home: Path) -> list[dict[str, object]]:
    """The other peers, as `tunnelmesh peers --json` on ``host`` lists them."""
    out = host.run(
        [sys.executable, "-c", MAIN, "peers", "--json"], env=env_for(home), timeout=60
    ).stdout
    return [p for p in json.loads(out) if not p["self"]]  # the other peers


def online_names(host: Host, home: Path) -> set[str]:
    return {str(p["name"]) for p in peers_json(host, home) if p["online"]}


def wait_online(host: Host, home: Path, expected: set[str], timeout: float) -> float:
    start = time.monotonic()
    deadline = start + timeout
    while True:
        got = online_names(host, home)
        if got == expected:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{host.name} sees {sorted(got)} online, wanted {sorted(expected)}"
            )
        time.sleep(0.2)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        # stuck: every thread's stack goes to its log (tunnelmesh registers SIGUSR1), then kill
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(1)
        proc.kill()
        proc.wait()
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.lab
def test_coordinator_and_three_peers(lab: Lab, tmp_path: Path) -> None:
    nat = lab.add_nat("nat", kind="full-cone")
    coord = lab.add_host("coord")
    peers = [lab.add_host("p1"), lab.add_host("p2"), lab.add_host("p3", switch=nat.inside)]
    homes = {h.name: tmp_path / h.name for h in [coord, *peers]}
    cfg = write_config(tmp_path, coord)
    server = start_coordinator(coord, cfg, homes["coord"])
    daemons: dict[str, subprocess.Popen[str]] = {}
    ips: dict[str, str] = {}
    for h in peers:
        daemons[h.name], ips[h.name] = start_peer(h, coord, homes[h.name])
    everyone = {"coord", "p1", "p2", "p3"}
    # Every node, the coordinator's own peer included, sees the other three online within 5 s
    # of the last join (each check runs a fresh `tunnelmesh peers` process).
    for h in [*peers, coord]:
        wait_online(h, homes[h.name], everyone - {h.name}, timeout=5.0)
    by_name = {str(p["name"]): str(p["mesh_ip"]) for p in peers_json(coord, homes["coord"])}
    assert by_name == ips

    # A peer restart keeps its mesh IP.
    stop(daemons["p1"])
    daemons["p1"], ip_again = start_peer(peers[0], coord, homes["p1"])
    assert ip_again == ips["p1"]

    # The coordinator restarted with the same state directory keeps every name and IP.
    stop(server)
    server = start_coordinator(coord, cfg, homes["coord"])
    wait_online(peers[1], homes["p2"], everyone - {"p2"}, timeout=20.0)
    after = {str(p["name"]): str(p["mesh_ip"]) for p in peers_json(coord, homes["coord"])}
    assert after == by_name
    for proc in [*daemons.values(), server]:
        stop(proc)


@pytest.mark.lab
@pytest.mark.skipif(
    shutil.which("turnutils_stunclient") is None,
    reason="needs turnutils_stunclient (apt-get install coturn)",
)
def test_standard_stun_client_through_nat(lab: Lab, tmp_path: Path) -> None:
    nat = lab.add_nat("nat", kind="full-cone")
    coord = lab.add_host("coord")
    client = lab.add_host("client", switch=nat.inside)
    server = start_coordinator(coord, write_config(tmp_path, coord), tmp_path / "coord")
    out = client.run(["turnutils_stunclient", "-p", "3478", coord.address], timeout=30).stdout
    mapped = re.findall(r"UDP reflexive addr: ([\d.]+):(\d+)", out)
    assert mapped, out
    assert mapped[0][0] == nat.outside_address != client.address
    # our own client agrees, from a chosen local port (the NAT keeps it: full cone)
    code = (
        "import asyncio; from tunnelmesh.control.daemon import stun_query; "
        f"print(asyncio.run(stun_query('{coord.address}', 3478, local_port=40123)))"
    )
    ours = client.run([sys.executable, "-c", code], timeout=30).stdout
    assert f"('{nat.outside_address}', 40123)" in ours
    stop(server)


@pytest.mark.lab
def test_serve_says_what_it_binds_and_the_urls_for_peers(lab: Lab, tmp_path: Path) -> None:
    """The default listen (all addresses) is printed as such, with the URLs peers should use,
    and a peer joins with the printed URL."""
    coord, peer = lab.add_host("coord"), lab.add_host("peer")
    cfg = tmp_path / "server.yaml"
    cfg.write_text(
        f'auth_token: "{TOKEN}"\nlisten: "0.0.0.0:8443"\nstun_listen: "0.0.0.0:3478"\n'
        f'data_dir: "{tmp_path / "state"}"\n'
    )
    home = tmp_path / "coord-home"
    proc = coord.python(
        "-c", MAIN, "serve", "-c", str(cfg), env=env_for(home), stdout=subprocess.PIPE
    )
    first = wait_for_line(proc, "coordinator listening", timeout=30)
    assert "0.0.0.0:8443" in first and "127.0.0.1" not in first, first
    assert "STUN on udp 0.0.0.0:3478" in first, first
    urls = wait_for_line(proc, "peers join with", timeout=5)
    assert f"https://{coord.address}:8443" in urls and "127.0.0.1" not in urls, urls
    args = ["join", "--server", f"https://{coord.address}:8443", "--name", "peer", "--once"]
    out = peer.run(
        [sys.executable, "-c", MAIN, *args],
        env=env_for(tmp_path / "peer-home"),
        timeout=60,
    ).stdout
    assert "joined" in out
