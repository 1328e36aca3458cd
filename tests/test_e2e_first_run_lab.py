"""The README's first-run path on two 'machines', with nothing set beyond the quick start.

`tunnelmesh init --server`, `tunnelmesh serve -c server.yaml` on the coordinator, then
`tunnelmesh join --server <printed URL> --token <auth_token> --name N` on two peers: no config
file on the peers, no environment variable of tunnelmesh. Each machine is a lab namespace whose
processes get their own /run and /var/lib (tmpfs in a private mount namespace: the default
control socket /run/tunnelmesh.sock, the default data_dir /var/lib/tunnelmesh) and their own
HOME (~/.tunnelmesh), as separate machines have; each
namespace has its own /etc/resolv.conf (the lab's), which the node points at its resolver.

Checked: serve prints the URL peers use; both peers come up; names resolve through the system
resolver with the defaults (no systemd-resolved: the resolver takes port 53 and resolv.conf
points at it); pings work both ways by name; one SIGTERM stops each peer and restores
resolv.conf.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_udp")

from tunnelmesh.testing.lab import LAB_RESOLV_CONF, Host, Lab, wait_for_line

pytestmark = pytest.mark.lab

TM = f"{shlex.quote(sys.executable)} -m tunnelmesh"


def machine(host: Host, home: Path, command: str) -> subprocess.Popen[str]:
    """``command`` (exec'd by sh) on ``host`` with its own /run, /var/lib (the coordinator's
    default data_dir, /var/lib/tunnelmesh) and HOME."""
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELMESH_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    script = (
        "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib && "
        f"cd {shlex.quote(str(home))} && exec {command}"
    )
    return host.popen(
        ["unshare", "-m", "sh", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_first_run_path_with_quick_start_settings_only(lab: Lab, tmp_path: Path) -> None:
    coord, alpha, beta = lab.add_host("coord"), lab.add_host("alpha"), lab.add_host("beta")
    server = machine(
        coord,
        tmp_path / "coord",
        f"sh -c '{TM} init --server && grep auth_token server.yaml && "
        f"exec {TM} serve -c server.yaml'",
    )
    token = wait_for_line(server, "auth_token", 60).split('"')[1]
    # the log line says what is bound too (it said https://127.0.0.1:8443)
    assert "https://0.0.0.0:8443," in wait_for_line(server, "coordinator API on", 60)
    wait_for_line(server, "coordinator listening on 0.0.0.0:8443", 60)
    urls = wait_for_line(server, "peers join with", 10)
    url = re.search(r"https://\S+", urls).group(0)  # type: ignore[union-attr]
    assert url == f"https://{coord.address}:8443", urls

    peers = {
        h.name: machine(h, tmp_path / h.name, f"{TM} join --server {url} --token {token} "
                        f"--name {h.name}")
        for h in (alpha, beta)
    }  # fmt: skip
    for proc in peers.values():
        wait_for_line(proc, "system resolver: resolv.conf", 90)  # logged before "node up"
        wait_for_line(proc, "node up", 60)
    for src, dst in ((alpha, "beta"), (beta, "alpha")):
        for name in (f"{dst}.tunnelmesh", f"{dst}.tm"):
            # bounded: the other peer may still be joining, the first packet may wait for the
            # WireGuard handshake
            deadline = time.monotonic() + 30
            while True:
                out = src.run(["ping", "-c1", "-W2", name], check=False, timeout=30)
                if out.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if out.returncode != 0:
                for proc in peers.values():
                    proc.terminate()
                logs = {n: p.communicate(timeout=20)[0].splitlines() for n, p in peers.items()}
                own = {n: [x for x in lines if "asyncssh" not in x] for n, lines in logs.items()}
                pytest.fail(f"{src.name}: ping {name}: {out.stdout}{out.stderr}\n{own}")
    assert alpha.run(["cat", "/etc/resolv.conf"]).stdout.splitlines()[-1] == (
        "nameserver 127.0.0.53"
    )
    for proc in peers.values():
        proc.terminate()
        wait_for_line(proc, "node stopped", 15)
        assert proc.wait(10) == 0
    for h in (alpha, beta):
        assert h.run(["cat", "/etc/resolv.conf"]).stdout == LAB_RESOLV_CONF
    server.terminate()
    wait_for_line(server, "coordinator stopped", 15)
