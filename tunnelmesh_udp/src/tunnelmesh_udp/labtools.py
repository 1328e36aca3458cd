"""Helpers for namespace-lab tests and the benchmark: start tunnelmesh and wireguard-go nodes.

They work with any host object that has ``run``, ``popen`` and ``python`` like
:class:`tunnelmesh.testing.lab.Host`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tunnelmesh.testing.wireguard import KeyPair, start_wireguard_go, stop_process

__all__ = ["KeyPair", "start_static_node", "start_wireguard_go", "stop_process", "wait_ready"]


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
