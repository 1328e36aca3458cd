"""Helpers for namespace-lab tests and the benchmark: start tunnelmesh and wireguard-go nodes.

They work with any host object that has ``run``, ``popen`` and ``python`` like
:class:`tunnelmesh.testing.lab.Host`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tunnelmesh.errors import LabError
from tunnelmesh.proto.wgcrypto import public_key_of

__all__ = ["KeyPair", "start_static_node", "start_wireguard_go", "stop_process", "wait_ready"]


class KeyPair:
    """An X25519 key pair with ``wg``-style base64 forms."""

    def __init__(self, private: bytes | None = None) -> None:
        self.private = private or os.urandom(32)
        self.public = public_key_of(self.private)
        self.private_b64 = base64.b64encode(self.private).decode()
        self.public_b64 = base64.b64encode(self.public).decode()


def start_static_node(
    host: Any,
    workdir: Path,
    *,
    name: str,
    key: KeyPair,
    address: str,
    listen_port: int,
    peers: list[dict[str, Any]],
    interface: str = "tm0",
    mtu: int = 1420,
    extra: dict[str, Any] | None = None,
    wait: bool = True,
) -> subprocess.Popen[str]:
    """Start ``python -m tunnelmesh_udp.static`` in ``host``; waits for its ``ready`` line
    unless ``wait`` is False (then call :func:`wait_ready`, e.g. after starting several)."""
    config = {
        "interface": interface,
        "address": address,
        "mtu": mtu,
        "listen": f"0.0.0.0:{listen_port}",
        "private_key": key.private_b64,
        "peers": peers,
        **(extra or {}),
    }
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    proc: subprocess.Popen[str] = host.python(
        "-m", "tunnelmesh_udp.static", str(path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    if wait:
        wait_ready(proc)
    return proc


def wait_ready(proc: subprocess.Popen[str], timeout: float = 20) -> None:
    """Wait (bounded) for a static node's ``tunnelmesh-udp ready`` line."""
    from tunnelmesh.testing.lab import wait_for_line

    wait_for_line(proc, "tunnelmesh-udp ready", timeout=timeout)


def start_wireguard_go(
    host: Any,
    workdir: Path,
    *,
    ifname: str,
    key: KeyPair,
    address: str,
    listen_port: int,
    peer_public_b64: str,
    allowed_ips: str,
    endpoint: str | None = None,
) -> subprocess.Popen[str]:
    """Start Debian's wireguard-go in the foreground in ``host`` and configure it with ``wg``.

    ``ifname`` must be unique on the machine: the UAPI socket directory /var/run/wireguard is
    shared by every namespace.
    """
    proc: subprocess.Popen[str] = host.popen(
        ["env", "LOG_LEVEL=error", "wireguard-go", "-f", ifname],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sock = Path(f"/var/run/wireguard/{ifname}.sock")
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise LabError(f"wireguard-go did not create {sock}")
        time.sleep(0.05)
    keyfile = workdir / f"{ifname}.key"
    keyfile.write_text(key.private_b64 + "\n")
    keyfile.chmod(0o600)
    cmd = ["wg", "set", ifname, "private-key", str(keyfile), "listen-port", str(listen_port)]
    cmd += ["peer", peer_public_b64, "allowed-ips", allowed_ips]
    if endpoint:
        cmd += ["endpoint", endpoint]
    host.run(cmd)
    host.run(["ip", "addr", "add", address, "dev", ifname])
    host.run(["ip", "link", "set", ifname, "up"])
    return proc


def stop_process(proc: subprocess.Popen[str], timeout: float = 5.0) -> str:
    """SIGTERM a process started by the helpers above, wait, and return its remaining output."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""
