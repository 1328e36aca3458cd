"""The namespace lab's NAT routers and internet host."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
from tunnelmesh.errors import LabError
from tunnelmesh.testing.lab import INTERNET_PAGE, Host, Lab, Nat, wait_for_line

pytestmark = pytest.mark.lab

PROBE = ("-m", "tunnelmesh.testing.natprobe")


def _echo(host: Host) -> str:
    proc = host.python(*PROBE, "echo", host.address, "0", stdout=subprocess.PIPE)
    return f"{host.address}:{wait_for_line(proc, 'ready').split()[1]}"


@dataclass
class Probe:
    proc: subprocess.Popen[str]
    local_port: int
    mapped: dict[str, str]

    def unsolicited_before_marker(self, marker_server: str, sender: str) -> list[str]:
        """Lines from ``sender`` received before the answer to a fresh ``map`` request."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("map\n")
        self.proc.stdin.flush()
        seen: list[str] = []
        while True:
            line = wait_for_line(self.proc, "recv", timeout=10).split()
            if line[1] == marker_server:
                return seen
            if line[1].startswith(sender + ":"):
                seen.append(" ".join(line[2:]))


def _probe(host: Host, servers: list[str]) -> Probe:
    proc = host.python(*PROBE, "probe", *servers, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    mapped: dict[str, str] = {}
    while True:
        words = wait_for_line(proc, "", timeout=20).split()
        if words[0] == "ready":
            return Probe(proc, int(words[1]), mapped)
        mapped[words[1]] = words[2]


def _nat_world(lab: Lab, kind: str) -> tuple[Nat, Host, list[Host], Host]:
    nat = lab.add_nat("nat", kind)  # type: ignore[arg-type]
    inside = lab.add_host("in", switch=nat.inside)
    servers = [lab.add_host(f"s{i}") for i in range(3)]
    stranger = lab.add_host("stranger")
    return nat, inside, servers, stranger


def test_three_hosts_ping_across_a_nat(lab: Lab) -> None:
    nat = lab.add_nat("nat", "symmetric")
    a = lab.add_host("a", switch=nat.inside)
    b = lab.add_host("b", switch=nat.inside)
    c = lab.add_host("c")
    assert (nat.inside_address, a.address, b.address) == ("10.77.1.1", "10.77.1.2", "10.77.1.3")
    assert a.run(["ip", "route", "show", "100.64.0.0/24"]).stdout.split()[:3] == [
        "100.64.0.0/24", "via", "10.77.1.1",
    ]  # fmt: skip
    assert a.ping(c.address) and b.ping(c.address) and a.ping(b.address)
    assert not c.ping(a.address)  # no route from the wan into the private network
    assert nat.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    assert c.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"


def test_symmetric_nat_maps_per_destination_and_filters_strangers(lab: Lab) -> None:
    nat, inside, servers, stranger = _nat_world(lab, "symmetric")
    echoes = [_echo(s) for s in servers]
    probe = _probe(inside, echoes)
    ips = {m.split(":")[0] for m in probe.mapped.values()}
    ports = {m.split(":")[1] for m in probe.mapped.values()}
    assert ips == {nat.outside_address}
    assert len(ports) > 1  # a new random port per destination (all equal: chance ~1e-9)
    target = probe.mapped[echoes[0]]
    stranger.run([sys.executable, *PROBE, "send", target, "intruder", "--count", "3"])
    assert probe.unsolicited_before_marker(echoes[0], stranger.address) == []


def test_full_cone_nat_maps_once_and_lets_anyone_in(lab: Lab) -> None:
    nat, inside, servers, stranger = _nat_world(lab, "full-cone")
    echoes = [_echo(s) for s in servers]
    probe = _probe(inside, echoes)
    expected = f"{nat.outside_address}:{probe.local_port}"  # same mapping, port preserved
    assert set(probe.mapped.values()) == {expected}
    stranger.run([sys.executable, *PROBE, "send", expected, "hello-from-stranger"])
    line = wait_for_line(probe.proc, "hello-from-stranger", timeout=10).split()
    assert line[0] == "recv" and line[1].startswith(stranger.address + ":")


def test_unknown_nat_kind_is_refused(lab: Lab) -> None:
    with pytest.raises(LabError, match="unknown NAT kind"):
        lab.add_nat("nat", "restricted")  # type: ignore[arg-type]


def test_host_behind_nat_fetches_the_internet_page(lab: Lab) -> None:
    nat = lab.add_nat("nat", "symmetric")
    a = lab.add_host("a", switch=nat.inside)
    assert lab.internet.url == f"http://{lab.internet.address}/"
    code = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), end='')"
    out = a.run([sys.executable, "-c", code, lab.internet.url + "any/path"]).stdout
    assert out == INTERNET_PAGE


def test_nat_behind_nat_reaches_the_wan(lab: Lab) -> None:
    outer = lab.add_nat("outer", "full-cone")
    inner = lab.add_nat("inner", "symmetric", outside=outer.inside)
    a = lab.add_host("a", switch=inner.inside)
    c = lab.add_host("c")
    assert inner.inside_address == "10.77.2.1"
    assert a.ping(c.address)
    assert a.ping(outer.inside_address)
