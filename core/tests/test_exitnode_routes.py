"""Exit-node routes and NAT with a fake command runner and temporary files (no root needed)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from tunnelmesh.exit.system import ExitGateway, ExitNodeError, ExitRoutes


class FakeIp:
    """Records commands; answers `ip -j route get/show` from a small table."""

    def __init__(self, routes: dict[str, dict[str, str]], default: list[dict[str, str]]) -> None:
        self.routes = routes
        self.default = default
        self.calls: list[str] = []
        self.fail_on: str | None = None

    def __call__(self, cmd: Sequence[str], stdin: str | None) -> str:
        line = " ".join(cmd)
        self.calls.append(line + (f" <<{stdin}" if stdin else ""))
        if self.fail_on and self.fail_on in line + (stdin or ""):
            raise ExitNodeError(f"{line}: failed")
        if cmd[:4] == ["ip", "-j", "route", "get"]:
            return json.dumps([self.routes[cmd[4]]])
        if cmd[:4] == ["ip", "-j", "route", "show"]:
            return json.dumps(self.default)
        return ""


def fake() -> FakeIp:
    return FakeIp(
        {
            "198.51.100.7": {"dev": "eth0", "gateway": "192.168.1.1"},
            "192.168.1.20": {"dev": "eth0"},
            "203.0.113.5": {"dev": "tm0"},
        },
        [{"dev": "eth0", "gateway": "192.168.1.1"}],
    )


def test_apply_adds_bypass_then_split_routes_and_restore_flushes() -> None:
    ip = fake()
    routes = ExitRoutes("tm0", bypass=["198.51.100.7", "192.168.1.20"], run=ip)
    with routes:
        assert routes.bypass == {
            "198.51.100.7": ["via", "192.168.1.1", "dev", "eth0"],
            "192.168.1.20": ["dev", "eth0"],
        }
    assert ip.calls == [
        "ip -4 route flush proto 211",
        "ip -j route get 198.51.100.7",
        "ip route replace 198.51.100.7/32 via 192.168.1.1 dev eth0 proto 211",
        "ip -j route get 192.168.1.20",
        "ip route replace 192.168.1.20/32 dev eth0 proto 211",
        "ip route replace 0.0.0.0/1 dev tm0 proto 211",
        "ip route replace 128.0.0.0/1 dev tm0 proto 211",
        "ip -4 route flush proto 211",
    ]


def test_bypass_added_later_uses_the_default_route_not_the_tunnel() -> None:
    ip = fake()
    routes = ExitRoutes("tm0", bypass=["198.51.100.7"], run=ip)
    routes.apply()
    ip.calls.clear()
    routes.set_bypass(["203.0.113.5"])
    assert ip.calls == [
        "ip route del 198.51.100.7/32 proto 211",
        "ip -j route get 203.0.113.5",
        "ip -j route show default",
        "ip route replace 203.0.113.5/32 via 192.168.1.1 dev eth0 proto 211",
    ]


def test_failed_apply_removes_what_it_added() -> None:
    ip = fake()
    ip.fail_on = "128.0.0.0/1"
    with pytest.raises(ExitNodeError):
        ExitRoutes("tm0", bypass=["198.51.100.7"], run=ip).apply()
    assert ip.calls[-1] == "ip -4 route flush proto 211"


def test_an_address_with_no_route_outside_the_tunnel_gets_no_bypass() -> None:
    ip = fake()
    ip.default = [{"dev": "tm0"}]
    routes = ExitRoutes("tm0", bypass=["203.0.113.5", "192.168.1.20"], run=ip)
    routes.apply()
    assert routes.bypass == {"192.168.1.20": ["dev", "eth0"]}
    assert "ip route replace 0.0.0.0/1 dev tm0 proto 211" in ip.calls
    assert not any(c.startswith("ip route replace 203.0.113.5") for c in ip.calls)


def gateway(tmp_path: Path, ip: FakeIp, forward: str = "0") -> tuple[ExitGateway, Path]:
    sysctl = tmp_path / "sys" / "net" / "ipv4" / "ip_forward"
    sysctl.parent.mkdir(parents=True)
    sysctl.write_text(forward + "\n")
    gw = ExitGateway(
        "10.42.0.0/16", state_dir=tmp_path / "state", proc_sys=tmp_path / "sys", run=ip
    )
    return gw, sysctl


def test_gateway_masquerades_and_restores_forwarding(tmp_path: Path) -> None:
    ip = fake()
    gw, sysctl = gateway(tmp_path, ip)
    with gw:
        assert sysctl.read_text() == "1\n"
        assert json.loads((tmp_path / "state" / "exit-gateway.json").read_text()) == {
            "ip_forward": "0"
        }
        script = ip.calls[-1]
        assert "ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 masquerade" in script
        assert "type nat hook postrouting" in script
    assert sysctl.read_text() == "0\n"
    assert not (tmp_path / "state" / "exit-gateway.json").exists()
    assert ip.calls[-1].endswith("delete table ip tunnelmesh_exit\n")


def test_gateway_recovers_after_a_crash(tmp_path: Path) -> None:
    ip = fake()
    gw, sysctl = gateway(tmp_path, ip)
    gw.apply()  # and then the daemon dies: nothing restored
    fresh = ExitGateway(
        "10.42.0.0/16", state_dir=tmp_path / "state", proc_sys=tmp_path / "sys", run=ip
    )
    assert fresh.recover() is True
    assert sysctl.read_text() == "0\n"
    assert fresh.recover() is False


def test_gateway_failure_is_undone(tmp_path: Path) -> None:
    ip = fake()
    ip.fail_on = "masquerade"
    gw, sysctl = gateway(tmp_path, ip)
    with pytest.raises(ExitNodeError, match="cannot set up the exit"):
        gw.apply()
    assert sysctl.read_text() == "0\n"
    assert not (tmp_path / "state" / "exit-gateway.json").exists()
