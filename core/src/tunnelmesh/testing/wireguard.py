"""WireGuard pieces for namespace-lab tests and benchmarks: key pairs in ``wg``'s base64 form and
Debian's wireguard-go as a stock WireGuard peer (configured with ``wg``), plus stopping a process.

They work with any host object that has ``run`` and ``popen`` like
:class:`tunnelmesh.testing.lab.Host`. The UDP transport's and the WireGuard concentrator's lab
tests and benchmarks share them.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tunnelmesh.errors import LabError
from tunnelmesh.proto.wgcrypto import public_key_of

__all__ = ["KeyPair", "launch_wireguard_go", "start_wireguard_go", "stop_process"]


class KeyPair:
    """An X25519 key pair with ``wg``-style base64 forms."""

    def __init__(self, private: bytes | None = None) -> None:
        self.private = private or os.urandom(32)
        self.public = public_key_of(self.private)
        self.private_b64 = base64.b64encode(self.private).decode()
        self.public_b64 = base64.b64encode(self.public).decode()


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
    proc = launch_wireguard_go(host, ifname)
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


def launch_wireguard_go(host: Any, ifname: str) -> subprocess.Popen[str]:
    """Start Debian's wireguard-go in the foreground in ``host`` (a lab host) and wait until its
    UAPI socket ``/var/run/wireguard/<ifname>.sock`` is there (the interface is not configured).

    Raises:
        LabError: no socket within 10 s, or wireguard-go ended (it is stopped then).
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
            stop_process(proc)
            raise LabError(f"wireguard-go did not create {sock}")
        time.sleep(0.05)
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
