"""Two peers, each behind its own symmetric NAT, reach each other through the coordinator's
relay: ping both ways and a TCP transfer through the mesh (namespace lab)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from tunnelmesh.testing.lab import Host, Lab, wait_for_line

TOKEN = "relay-lab-token-0123456789abcdef"
MAIN = "import sys; from tunnelmesh.cli import main; sys.exit(main())"


def env_for(home: Path, plugins: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TUNNELMESH_HOME=str(home),
        TUNNELMESH_NO_TRUST="1",
        TUNNELMESH_LOAD_PLUGINS=plugins,
        PYTHONUNBUFFERED="1",
    )
    env.pop("TUNNELMESH_CONFIG", None)
    return env


def start_coordinator(coord: Host, tmp_path: Path) -> subprocess.Popen[str]:
    cfg = tmp_path / "server.yaml"
    cfg.write_text(
        f'auth_token: "{TOKEN}"\n'
        f'listen: "{coord.address}:8443"\n'
        f'stun_listen: "{coord.address}:3478"\n'
        f'data_dir: "{tmp_path / "state"}"\n'
        "relay:\n"
        "  rate_bytes_per_second: 50000000\n"
    )
    log = open(tmp_path / "serve.log", "a")  # noqa: SIM115 - kept by the process
    proc = coord.python(
        "-c",
        MAIN,
        "serve",
        "-c",
        str(cfg),
        env=env_for(tmp_path / "coord", "relay"),  # only the relay plugin, from its entry point
        stdout=subprocess.PIPE,
        stderr=log,
    )
    log.close()
    wait_for_line(proc, "coordinator listening", timeout=30)
    return proc


def start_peer(host: Host, server: str, name: str, peer: str, *dial: str) -> subprocess.Popen[str]:
    return host.python(
        "-m",
        "tunnelmesh_relay.labpeer",
        "--server",
        server,
        "--token",
        TOKEN,
        "--name",
        name,
        "--peer",
        peer,
        "--transport",
        "relay",
        *dial,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    return out


@pytest.mark.lab
def test_relay_between_peers_behind_symmetric_nats(lab: Lab, tmp_path: Path) -> None:
    nat_a = lab.add_nat("nata", kind="symmetric")
    nat_b = lab.add_nat("natb", kind="symmetric")
    coord = lab.add_host("coord")
    a = lab.add_host("a", switch=nat_a.inside)
    b = lab.add_host("b", switch=nat_b.inside)
    assert not a.ping(b.address, timeout=0.5)  # no direct path between the two NATed hosts
    coordinator = start_coordinator(coord, tmp_path)
    server = f"https://{coord.address}:8443"
    pb = start_peer(b, server, "b", "a")
    pa = start_peer(a, server, "a", "b", "--dial", "relay")
    line_a = wait_for_line(pa, "labpeer ready", timeout=40)
    line_b = wait_for_line(pb, "labpeer ready", timeout=40)
    ip_a, ip_b = line_a.split()[2], line_b.split()[2]
    assert line_a.split()[3] == ip_b
    assert a.ping(ip_b, count=3, timeout=3.0)
    assert b.ping(ip_a, count=3, timeout=3.0)

    server_proc = b.popen(["iperf3", "-s", "-1", "-B", ip_b], stdout=subprocess.DEVNULL)
    try:
        b.wait_listening(ip_b, 5201)  # a client started before the server listens is refused
        result = a.run(
            ["iperf3", "-c", ip_b, "-t", "2", "-J", "--connect-timeout", "5000"], timeout=30
        )
        sent = json.loads(result.stdout)["end"]["sum_received"]["bytes"]
        assert sent > 100_000
    finally:
        server_proc.wait(timeout=10)

    out_a, out_b = stop(pa), stop(pb)
    stats_a = json.loads(out_a.split("labpeer stats ", 1)[1].splitlines()[0])
    stats_b = json.loads(out_b.split("labpeer stats ", 1)[1].splitlines()[0])
    assert stats_a["stats"]["rx_messages"] > 10 and stats_b["stats"]["rx_messages"] > 10
    assert stats_a["forwarder"].get("tx_packets", 0) > 100
    coordinator.terminate()
    coordinator.wait(timeout=20)
