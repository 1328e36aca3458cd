"""Attacks on the peer side of the trust model, refused (issue 11), without root.

* a client of an exit tries the exit's LAN, private ranges, 169.254.169.254, loopback: the
  exit's forward chain drops them (the ruleset), the host forwards nothing else;
* a peer not in ``exit.allowed_peers`` sends internet traffic to an exit: dropped by the guard
  (by its key-authenticated link), and its mesh IP is not in the chain's clients;
* ``exit.allowed_peers`` given as names: a config error.

The lab versions (real nftables, real `join` processes) are in tests/test_attacks_peer_lab.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_exitnode_service import FakeNode, FakeRunner, peer, service, until
from tunnelmesh.config import ExitConfig, PeerConfig
from tunnelmesh.exit.service import ExitGuard
from tunnelmesh.exit.system import BLOCKED_RANGES, ExitGateway
from tunnelmesh.identity import Identity

MESH = "10.42.0.0/16"

ADDRS = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "203.0.113.7", "prefixlen": 24}]},
    {"ifname": "tm0", "addr_info": [{"family": "inet", "local": "10.42.0.1", "prefixlen": 16}]},
]


class Nft(FakeRunner):
    """Records the nft scripts; answers `ip -j -4 addr show` with :attr:`addrs`."""

    addrs: list[dict[str, Any]] = ADDRS

    def __call__(self, cmd: Sequence[str], stdin: str | None) -> str:
        out = super().__call__(cmd, stdin)
        if list(cmd[:4]) == ["ip", "-j", "-4", "addr"]:
            return json.dumps(self.addrs)
        return out

    def scripts(self) -> list[str]:
        return [c for c in self.calls if c.startswith("nft -f - <<") and "chain forward" in c]


def gateway(tmp_path: Path, run: Nft, forward: str = "0", **kw: Any) -> ExitGateway:
    sysctl = tmp_path / "sys" / "net" / "ipv4" / "ip_forward"
    sysctl.parent.mkdir(parents=True, exist_ok=True)
    sysctl.write_text(forward + "\n")
    return ExitGateway(
        MESH, tun="tm0", state_dir=tmp_path / "state", proc_sys=tmp_path / "sys", run=run, **kw
    )


def elements(script: str, name: str) -> list[str]:
    m = re.search(r"set " + name + r" \{[^}]*elements = \{ ([^}]*) \}", script)
    return m.group(1).split(", ") if m else []


def test_the_exit_drops_private_link_local_loopback_and_its_own_lan(tmp_path: Path) -> None:
    run = Nft()
    with gateway(tmp_path, run):
        (script,) = run.scripts()
    blocked = [ipaddress.ip_network(n) for n in elements(script, "blocked")]

    def covered(net: str) -> bool:
        return any(ipaddress.ip_network(net).subnet_of(b) for b in blocked)  # type: ignore[arg-type]

    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                "169.254.169.254/32", "127.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32",
                *BLOCKED_RANGES):  # fmt: skip
        assert covered(net), net
    assert covered("203.0.113.0/24")  # the exit's own LAN (eth0), read from the host
    for public in ("8.8.8.8/32", "198.51.100.0/24", "1.1.1.1/32"):
        assert not covered(public), public
    # collapsed: no element inside another (nftables refuses overlapping interval elements)
    assert not any(a != b and a.subnet_of(b) for a in blocked for b in blocked)  # type: ignore[arg-type]
    assert 'iifname "tm0" ip daddr @blocked drop' in script
    assert 'iifname "tm0" ip saddr @clients accept' in script
    assert elements(script, "clients") == [MESH]
    assert 'iifname "tm0" oifname "tm0" drop' in script  # never mesh to mesh by the kernel
    assert 'oifname "tm0" ip daddr 10.42.0.0/16 ct state established,related accept' in script
    # Forwarding was off: the exit turns it on, but the chain passes nothing else (no
    # host-wide side effect), and the exit's own LAN address is no way in either.
    assert "hook forward priority filter - 1; policy drop;" in script
    assert 'iifname "tm0" ip daddr != 10.42.0.0/16 drop' in script
    # The rules come before the masquerade's table is live: one atomic script.
    assert script.index("chain forward") < script.index("masquerade")


def test_the_exit_follows_its_lan_when_the_hosts_addresses_change(tmp_path: Path) -> None:
    async def main() -> None:
        run = Nft()
        node = FakeNode(tmp_path, allow_exit_traffic=True)
        svc = service(node, run, tmp_path)
        await svc.start()
        assert "203.0.113.0/24" in elements(run.scripts()[-1], "blocked")
        await svc.network_changed()  # nothing changed: the table stays
        assert len(run.scripts()) == 1
        # the exit moved to another network: its new LAN is dropped, the old one no longer
        run.addrs = [
            {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "198.51.100.9",
                                              "prefixlen": 24}]},
        ]  # fmt: skip
        await svc.network_changed()
        blocked = elements(run.scripts()[-1], "blocked")
        assert "198.51.100.0/24" in blocked and "203.0.113.0/24" not in blocked
        await svc.aclose()

    asyncio.run(main())


def test_a_host_that_forwarded_already_keeps_forwarding(tmp_path: Path) -> None:
    run = Nft()
    with gateway(tmp_path, run, forward="1"):
        (script,) = run.scripts()
    assert "policy accept;" in script.split("chain forward", 1)[1].split("}", 1)[0]
    assert 'iifname "tm0" ip daddr @blocked drop' in script  # its clients are still limited


def test_allow_lan_forwards_to_private_destinations(tmp_path: Path) -> None:
    run = Nft()
    with gateway(tmp_path, run, allow_lan=True):
        (script,) = run.scripts()
    assert "set blocked" not in script and "@blocked" not in script
    assert "chain input" not in script
    assert 'iifname "tm0" ip saddr @clients accept' in script


def test_allowed_clients_are_replaced_atomically_while_applied(tmp_path: Path) -> None:
    run = Nft()
    gw = gateway(tmp_path, run, clients=[])
    with gw:
        (script,) = run.scripts()
        assert "set clients" not in script  # nobody allowed yet: all of it dropped
        assert 'iifname "tm0" drop' in script
        assert gw.set_clients(["10.42.0.7"])
        assert elements(run.scripts()[-1], "clients") == ["10.42.0.7"]
        assert not gw.set_clients(["10.42.0.7"])  # unchanged: no nft call
        assert len(run.scripts()) == 2


def test_exit_allowed_peers_must_be_keys_not_names() -> None:
    key = Identity.generate()
    cfg = ExitConfig(allowed_peers=[key.peer_id, key.public_openssh, key.peer_id])
    assert cfg.allowed_peers == [key.peer_id]  # a key is turned into its peer ID, once
    for bad in ("alice", "ops-*", "SHA256:abc", "ssh-ed25519 AAAAnotakey"):
        with pytest.raises(ValueError, match=r"exit\.allowed_peers"):
            ExitConfig(allowed_peers=[bad])
    with pytest.raises(msgspec.ValidationError, match="names are not accepted"):
        msgspec.convert({"exit": {"allowed_peers": ["alice"]}}, PeerConfig)


def test_a_peer_not_allowed_cannot_use_the_exit_even_under_an_allowed_name(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        run = Nft()
        node = FakeNode(
            tmp_path, allow_exit_traffic=True, exit=ExitConfig(allowed_peers=["a" * 16])
        )
        svc = service(node, run, tmp_path)
        await svc.start()
        assert svc.guard.clients == set()
        # "alice" with the allowed key, "mallory" with another
        node.upsert(msgspec.structs.replace(peer("alice", "10.42.0.5", []), peer_id="a" * 16))
        node.upsert(peer("mallory", "10.42.0.6", []))
        await until(lambda: svc.guard.clients == {"alice"})
        await until(lambda: bool(run.scripts()) and "10.42.0.5" in run.scripts()[-1])
        assert "10.42.0.6" not in run.scripts()[-1]
        outside = bytes([0x45]) + bytes(11) + bytes([10, 42, 0, 6]) + bytes([8, 8, 8, 8])
        assert svc.guard.verdicts([outside], "mallory", True) == [False]
        assert svc.guard.verdicts([outside], "alice", True) == [True]
        # mallory takes the name "alice" (another key): still not a client
        node.sync.peers.pop("alice")
        node.upsert(msgspec.structs.replace(peer("alice", "10.42.0.6", []), peer_id="m" * 16))
        await until(lambda: svc.guard.clients == set())
        await until(lambda: "10.42.0.5" not in run.scripts()[-1])
        assert svc.guard.verdicts([outside], "alice", True) == [False]
        assert svc.describe()["allowed_peers"] == ["a" * 16]
        await svc.aclose()

    asyncio.run(main())


def test_the_guard_on_an_exit_without_allowed_peers_passes_every_peer() -> None:
    guard = ExitGuard(MESH, allow=True)
    outside = bytes([0x45]) + bytes(11) + bytes([10, 42, 0, 6]) + bytes([8, 8, 8, 8])
    assert guard.verdicts([outside], "anyone", True) == [True]


# --- exit pinning ----------------------------------------------------------------------------

ID_EXIT, ID_OTHER = "e1e1e1e1e1e1e1e1", "0bad0bad0bad0bad"


class Store:
    def __init__(self) -> None:
        self.puts: list[dict[str, str]] = []

    def put(self, ctx: Any, activate: bool = True) -> None:
        self.puts.append(dict(ctx.exit_pins))


def pinned_node(tmp_path: Path, pins: dict[str, str] | None = None, **cfg: Any) -> FakeNode:
    node = FakeNode(tmp_path, **cfg)
    node.context.exit_pins = dict(pins or {})  # type: ignore[attr-defined]
    node.store = Store()  # type: ignore[attr-defined]
    return node


def exit_peer(name: str, peer_id: str, ip: str = "10.42.0.2") -> Any:
    return msgspec.structs.replace(
        peer(name, ip, ["192.0.2.2:2223"], exit_ok=True), peer_id=peer_id
    )


def test_a_peer_posing_under_the_exits_name_with_another_key_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        run = Nft()
        node = pinned_node(tmp_path, exit_node="e")
        svc = service(node, run, tmp_path, coordinator_ips=[])
        await svc.start()
        node.upsert(exit_peer("e", ID_EXIT))
        await until(lambda: svc.state == "routed")
        # resolved once, pinned, and kept in the context for the next start
        assert svc.pin_id == ID_EXIT and node.context.exit_pins == {"e": ID_EXIT}  # type: ignore[attr-defined]
        assert node.store.puts == [{"e": ID_EXIT}]  # type: ignore[attr-defined]
        assert any("pinned to its key" in line for line in node.lines)
        assert "0.0.0.0/0" in node.routes.peers["e"].mesh_ips

        # the exit is deleted and another key registers its name, allowing exit traffic
        node.sync.peers.pop("e")
        node.routes.remove_peer("e")
        node.upsert(exit_peer("e", ID_OTHER, ip="10.42.0.66"))
        await until(lambda: svc.state == "wrong_key")
        refusal = [line for line in node.lines if "now has another key" in line]
        assert len(refusal) == 1, node.lines
        assert ID_OTHER in refusal[0] and ID_EXIT in refusal[0] and "posing" in refusal[0]
        assert f"--exit-node {ID_OTHER}" in refusal[0]  # how to accept a real key change
        assert "0.0.0.0/0" not in node.routes.peers["e"].mesh_ips
        assert node.routes.lookup(bytes([8, 8, 8, 8])) is None  # nothing goes to the impostor
        assert not svc.routes.applied and run.calls[-1] == "ip -4 route flush proto 211"
        assert node.context.exit_pins == {"e": ID_EXIT}  # type: ignore[attr-defined]

        # the real exit comes back under another name: it is followed by its key
        node.upsert(exit_peer("e-2", ID_EXIT, ip="10.42.0.2"))
        await until(lambda: svc.state == "routed")
        assert node.routes.lookup(bytes([8, 8, 8, 8])).name == "e-2"  # type: ignore[union-attr]
        assert "0.0.0.0/0" not in node.routes.peers["e"].mesh_ips
        await svc.aclose()

    asyncio.run(main())


def test_a_restarted_client_refuses_the_impostor_from_the_start(tmp_path: Path) -> None:
    async def main() -> None:
        run = Nft()
        node = pinned_node(tmp_path, {"e": ID_EXIT}, exit_node="e")
        node.upsert(exit_peer("e", ID_OTHER))
        svc = service(node, run, tmp_path, coordinator_ips=[])
        await svc.start()
        await until(lambda: svc.state == "wrong_key")
        assert not run.routes()  # never routed, not even briefly
        assert svc.describe()["exit_peer_id"] == ID_EXIT
        await svc.aclose()

    asyncio.run(main())


def test_exit_node_given_as_a_peer_id_is_that_key_whatever_its_name(tmp_path: Path) -> None:
    async def main() -> None:
        run = Nft()
        node = pinned_node(tmp_path, exit_node=ID_EXIT)
        node.upsert(exit_peer(ID_EXIT[:4], ID_OTHER))  # a name-alike is not it
        svc = service(node, run, tmp_path, coordinator_ips=[])
        await svc.start()
        node.client.table.revision = 1
        node.callbacks[-1](None)
        await until(lambda: svc.state == "missing")
        node.upsert(exit_peer("gateway", ID_EXIT, ip="10.42.0.9"))
        await until(lambda: svc.state == "routed")
        assert node.routes.lookup(bytes([8, 8, 8, 8])).name == "gateway"  # type: ignore[union-attr]
        assert node.store.puts == []  # type: ignore[attr-defined]  # nothing to pin: given
        await svc.aclose()

    asyncio.run(main())


# --- coordinator filter rules name source peers by key ---------------------------------------


def test_coordinator_rules_name_source_peers_by_key_not_by_name(tmp_path: Path) -> None:
    from tunnelmesh.config import FilterConfig, FilterRule, ServerConfig
    from tunnelmesh.control.messages import PolicyRule
    from tunnelmesh.filter import FilterService
    from tunnelmesh.filter.craft import SYN, tcp

    def server(source_peer: str) -> ServerConfig:
        rule = FilterRule(port=22, source_peer=source_peer)
        return ServerConfig(auth_token="t" * 16, filter=FilterConfig(rules=[rule]))

    with pytest.raises(ValueError, match="source_peer 'alice': not a peer ID"):
        server("alice")
    assert server(ID_EXIT).filter.rules[0].source_peer == ID_EXIT

    # On a node: default deny; the coordinator allows ssh from alice's key only.
    service = FilterService()
    service.engine.default_deny = True
    rules = [PolicyRule(port=22, source_peer=ID_EXIT)]
    names = {ID_EXIT: "alice"}
    service.set_coordinator_rules(rules, names.get)
    syn = [tcp("10.42.0.5", "10.42.0.1", 40000, 22, SYN)]
    assert service.engine.verdicts(syn, "alice", True) == [True]
    # alice's key is renamed "alice-laptop": the rule follows the key
    names[ID_EXIT] = "alice-laptop"
    service.set_coordinator_rules(rules, names.get)
    syn = [tcp("10.42.0.5", "10.42.0.1", 40001, 22, SYN)]
    assert service.engine.verdicts(syn, "alice-laptop", True) == [True]
    # another key registers "alice" (the name was released): it gets nothing
    names[ID_OTHER] = "alice"
    service.set_coordinator_rules(rules, names.get)
    syn = [tcp("10.42.0.6", "10.42.0.1", 40002, 22, SYN)]
    assert service.engine.verdicts(syn, "alice", True) == [False]
    # the key leaves the mesh: its rule matches nobody (and is not applied to a name)
    del names[ID_EXIT]
    service.set_coordinator_rules(rules, names.get)
    assert [r.layer for r in service.engine.stats(0).rules] == []
