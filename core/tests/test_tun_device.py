"""The TUN device in a throw-away namespace: created, configured, removed on close and after a
crash (a killed owner), and a stale device is cleaned up on the next start."""

from __future__ import annotations

import sys
from typing import Any

import pytest

pytestmark = pytest.mark.lab

SCRIPT = """
import os, sys
from tunnelmesh.tun import TunDevice, TUN_F_CSUM, TUN_F_TSO4
tun = TunDevice.create("tmt0", address="10.77.200.1/24", mtu=1400, routes=["10.78.200.0/24"],
                       vnet_hdr=True)
print("offload", tun.set_offload(TUN_F_CSUM | TUN_F_TSO4), flush=True)
print("up", flush=True)
if sys.argv[1] == "crash":
    os.kill(os.getpid(), 9)
tun.close()
print("closed", flush=True)
"""


def test_create_configure_close_and_crash(lab: Any) -> None:
    h = lab.add_host("t")
    out = h.run([sys.executable, "-c", SCRIPT, "close"]).stdout
    assert "up" in out and "closed" in out
    assert h.run(["ip", "link", "show", "tmt0"], check=False).returncode != 0
    proc = h.run([sys.executable, "-c", SCRIPT, "crash"], check=False)
    assert proc.returncode == -9 and "up" in proc.stdout
    assert h.run(["ip", "link", "show", "tmt0"], check=False).returncode != 0


def test_configuration_and_stale_device(lab: Any) -> None:
    h = lab.add_host("t")
    h.run(["ip", "tuntap", "add", "dev", "tmt0", "mode", "tun"])  # a persistent leftover
    code = (
        "from tunnelmesh.tun import TunDevice\n"
        "import subprocess\n"
        "t = TunDevice.create('tmt0', address='10.77.200.1/24', mtu=1400,"
        " routes=['10.78.200.0/24'])\n"
        "print(subprocess.run(['ip', '-o', 'addr', 'show', 'tmt0'], capture_output=True,"
        " text=True).stdout)\n"
        "print(subprocess.run(['ip', 'route'], capture_output=True, text=True).stdout)\n"
        "print(subprocess.run(['ip', '-o', 'link', 'show', 'tmt0'], capture_output=True,"
        " text=True).stdout)\n"
        "t.close()\n"
    )
    out = h.run([sys.executable, "-c", code]).stdout
    assert "10.77.200.1/24" in out
    assert "10.78.200.0/24 dev tmt0" in out
    assert "mtu 1400" in out and "UP" in out
    assert h.run(["ip", "link", "show", "tmt0"], check=False).returncode != 0


def test_refuses_a_name_of_another_kind(lab: Any) -> None:
    h = lab.add_host("t")
    h.run(["ip", "link", "add", "tmt0", "type", "bridge"])
    proc = h.run(
        [sys.executable, "-c", "from tunnelmesh.tun import TunDevice; TunDevice.create('tmt0')"],
        check=False,
    )
    assert proc.returncode != 0 and "not a TUN device" in proc.stderr
