"""The namespace lab: switches, hosts, commands and processes inside hosts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from tunnelmesh.errors import LabError
from tunnelmesh.testing._netns import list_namespaces, namespace_pids
from tunnelmesh.testing.lab import WAN_CIDR, Lab, wait_for_line

pytestmark = pytest.mark.lab


def test_three_hosts_on_the_wan_reach_each_other(lab: Lab) -> None:
    a, b, c = (lab.add_host(name) for name in "abc")
    assert [h.address for h in (a, b, c)] == ["100.64.0.2", "100.64.0.3", "100.64.0.4"]
    assert a.ns.startswith(f"tml-{os.getpid()}-") and a.ns.endswith("-a")
    assert a.dev == "eth0" and a.switch is lab.wan and str(lab.wan.cidr) == WAN_CIDR
    assert a.exec_prefix == ["ip", "netns", "exec", a.ns]
    assert set(lab.namespaces) <= set(list_namespaces())
    assert a.ping(b.address) and b.ping(c.address) and c.ping(a.address)


def test_hosts_have_no_default_route(lab: Lab) -> None:
    a = lab.add_host("a")
    routes = a.run(["ip", "route", "show"]).stdout
    assert "default" not in routes
    assert a.route_get("1.1.1.1") is None
    assert a.route_get("100.64.0.200") is not None


def test_switches_are_separate_networks(lab: Lab) -> None:
    lan = lab.add_switch("lan", "10.99.0.0/24")
    a = lab.add_host("a", switch=lan)
    b = lab.add_host("b", switch=lan, address="10.99.0.50")
    c = lab.add_host("c")
    assert b.address == "10.99.0.50"
    assert a.ping(b.address)
    assert a.route_get(c.address) is None


def test_bad_names_and_addresses_are_refused(lab: Lab) -> None:
    lab.add_host("a")
    with pytest.raises(LabError, match="already has a node"):
        lab.add_host("a")
    with pytest.raises(LabError, match="must match"):
        lab.add_host("Bad_Name")
    with pytest.raises(LabError, match="not a host address"):
        lab.add_host("b", address="10.1.2.3")
    with pytest.raises(LabError, match="overlaps"):
        lab.add_switch("lan", "100.64.0.128/25")


def test_run_returns_output_and_raises_with_stderr(lab: Lab) -> None:
    a = lab.add_host("a")
    assert a.run(["ip", "-br", "addr", "show", "dev", a.dev]).stdout.split()[2] == "100.64.0.2/24"
    assert a.run("echo $((6 * 7))").stdout == "42\n"
    assert a.run("exit 3", check=False).returncode == 3
    with pytest.raises(LabError, match="no-such-device"):
        a.run(["ip", "link", "show", "no-such-device"])


def test_python_runs_this_interpreter_inside_the_namespace(lab: Lab) -> None:
    a = lab.add_host("a")
    code = (
        "import sys, socket, tunnelmesh; "
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('100.64.0.9', 9)); "
        "print(sys.executable, s.getsockname()[0])"
    )
    proc = a.python("-c", code, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert out.split() == [sys.executable, a.address]


def test_close_kills_processes_and_removes_namespaces() -> None:
    with Lab() as lab:
        a = lab.add_host("a")
        proc = a.popen(["sh", "-c", "sleep 60 & echo started; wait"], stdout=subprocess.PIPE)
        wait_for_line(proc, "started")
        inside = namespace_pids(a.ns)
        assert proc.pid in inside and len(inside) == 2
        namespaces = lab.namespaces
    assert proc.returncode is not None
    for pid in inside:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie_of_other(pid)
    assert not set(namespaces) & set(list_namespaces())
    assert lab.namespaces == []
    with pytest.raises(LabError, match="closed"):
        a.run(["true"])


def _is_zombie_of_other(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_host_can_have_legs_on_two_switches(lab: Lab) -> None:
    lan = lab.add_switch("lan")
    gw = lab.add_host("gw")
    dev = lab.connect(gw, lan)
    inner = lab.add_host("inner", switch=lan)
    assert (dev, gw.addresses) == ("eth1", {"eth0": "100.64.0.2", "eth1": "10.78.1.2"})
    assert gw.ping(inner.address) and gw.ping(lab.add_host("outer").address)
    assert inner.route_get("100.64.0.3") is None


def test_teardown_kills_processes_that_ignore_sigterm(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory()
    a = lab.add_host("a")
    stubborn = a.python(
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up'); time.sleep(60)",
        stdout=subprocess.PIPE,
    )
    wait_for_line(stubborn, "up")
    lab.close()
    assert stubborn.returncode == -9


@pytest.mark.lab
def test_every_host_has_its_own_resolv_conf() -> None:
    """A program in the lab that rewrites /etc/resolv.conf (a node's dns.system) changes its
    namespace's file, never the machine's; the files go with the lab."""
    from pathlib import Path

    from tunnelmesh.testing.lab import LAB_RESOLV_CONF, NETNS_ETC

    machine = Path("/etc/resolv.conf").read_bytes()
    with Lab() as lab:
        host = lab.add_host("a")
        assert host.run(["cat", "/etc/resolv.conf"]).stdout == LAB_RESOLV_CONF
        host.run("echo 'nameserver 127.0.0.53' > /etc/resolv.conf")
        assert (NETNS_ETC / host.ns / "resolv.conf").read_text() == "nameserver 127.0.0.53\n"
        ns = host.ns
    assert Path("/etc/resolv.conf").read_bytes() == machine
    assert not (NETNS_ETC / ns).exists()
