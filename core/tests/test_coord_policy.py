"""The coordinator's policy reaches the peers: filter rules and DNS aliases (loopback only).

The lab test with real ``serve``/``join`` processes is ``tests/test_policy_mesh_lab.py``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_coord_api import client, config, run, until
from tunnelmesh.config import FilterConfig, FilterRule
from tunnelmesh.control.client import PeerStatus
from tunnelmesh.control.messages import FilterRules, PeerGone, PeerUpserted, PolicyRule, Snapshot
from tunnelmesh.control.peertable import FilterRulesChanged, PeerTable
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.dns.backend import CoordinatorBackend
from tunnelmesh.filter import FilterService
from tunnelmesh.filter.craft import SYN, tcp

DENY_8080 = FilterRule(port=8080, action="deny")


def _rules(changes: list[Any]) -> list[tuple[PolicyRule, ...]]:
    return [c.rules for c in changes if isinstance(c, FilterRulesChanged)]


# --- filter rules -------------------------------------------------------------------------------


def test_filter_rules_come_with_the_snapshot_and_follow_a_reload(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path, filter=FilterConfig(rules=[DENY_8080]))
        async with CoordinatorServer(cfg) as server:
            a = await client(server, "alpha", peers_cache=tmp_path / "a" / "peers.json")
            seen: list[Any] = []
            a.add_callback(seen.append)
            task = asyncio.create_task(a.run())
            await until(lambda: bool(_rules(seen)))
            assert _rules(seen) == [(PolicyRule(port=8080, action="deny"),)]
            assert a.table.filter_rules == (PolicyRule(port=8080, action="deny"),)
            # A reload with the same rules pushes nothing; a change reaches every peer at once.
            assert server.reload(cfg) == []
            allow = FilterRule(port=22, source_peer="0123456789abcdef")
            changed = server.reload(
                msgspec.structs.replace(cfg, filter=FilterConfig(rules=[allow]))
            )
            assert changed == ["filter rules (1, pushed to every peer)"]
            await until(lambda: len(_rules(seen)) == 2)
            assert _rules(seen)[-1] == (PolicyRule(port=22, source_peer="0123456789abcdef"),)
            # Removing every rule is a change too (an empty coordinator layer).
            server.reload(msgspec.structs.replace(cfg, filter=FilterConfig()))
            await until(lambda: len(_rules(seen)) == 3)
            assert _rules(seen)[-1] == ()
            # The last rules received are cached for a restart while the coordinator is away.
            await a.aclose()
            await task
            cached = json.loads((tmp_path / "a" / "filter.json").read_text())
            assert cached == []

    run(main())


def test_a_reload_changes_only_the_filter(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path)
        async with CoordinatorServer(cfg) as server:
            other = msgspec.structs.replace(
                cfg, mesh_cidr="10.99.0.0/16", filter=FilterConfig(rules=[DENY_8080])
            )
            server.reload(other)
            assert server.coordinator.config.mesh_cidr == cfg.mesh_cidr
            assert server.coordinator.config.filter.rules == [DENY_8080]

    run(main())


def test_the_filter_cache_is_used_before_the_coordinator_answers(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path, filter=FilterConfig(rules=[DENY_8080]))
        cache = tmp_path / "a" / "peers.json"
        async with CoordinatorServer(cfg) as server:
            a = await client(server, "alpha", peers_cache=cache)
            task = asyncio.create_task(a.run())
            await until(lambda: a.table.filter_rules is not None)
            await a.aclose()
            await task
            # A new client (a restarted node) starts from the cache, before any push.
            b = await client(server, "alpha", ident=a.identity, peers_cache=cache)
            assert b.table.filter_rules == (PolicyRule(port=8080, action="deny"),)
            await b.aclose()
        # A damaged cache is ignored (with a warning), never an error.
        (tmp_path / "a" / "filter.json").write_text("{not json")
        async with CoordinatorServer(cfg) as server:
            c = await client(server, "alpha", ident=a.identity, peers_cache=cache)
            assert c.table.filter_rules is None
            await c.aclose()

    run(main())


def test_peer_table_reports_filter_rule_changes_once() -> None:
    table = PeerTable("me")
    rules = [PolicyRule(port=5432, action="deny", source_peer="beta")]
    assert table.apply(FilterRules(rules=rules)) == [FilterRulesChanged(tuple(rules))]
    assert table.apply(FilterRules(rules=rules)) == []  # same rules again: no event
    assert table.apply(FilterRules(rules=[])) == [FilterRulesChanged(())]


def test_coordinator_rules_enforced_by_the_filter_engine() -> None:
    service = FilterService()
    refused = service.set_coordinator_rules(
        [
            PolicyRule(port=8080, action="deny"),
            PolicyRule(port=0, action="deny"),  # bad input from the network: left out
            PolicyRule(port=22, protocol="icmp"),
            PolicyRule(port=23, action="maybe"),
        ]
    )
    assert len(refused) == 3
    engine = service.engine
    layers = {(r.layer, r.port, r.action) for r in engine.stats(0).rules}
    assert layers == {("coordinator", 8080, "deny")}
    syn = [
        tcp("10.42.0.3", "10.42.0.2", 40000, 8080, SYN),
        tcp("10.42.0.3", "10.42.0.2", 40001, 8081, SYN),
    ]
    assert engine.verdicts(syn, "beta", True) == [False, True]


# --- DNS aliases ----------------------------------------------------------------------------------


def test_aliases_are_published_checked_and_kept(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path)
        async with CoordinatorServer(cfg) as server:
            coord = server.coordinator
            wanted_a = ["db", "www.alpha", "beta", "this", "www", "Bad_Label", "x.beta", "db"]
            a = await client(server, "alpha", status=lambda: PeerStatus(aliases=wanted_a))
            b = await client(server, "beta", status=lambda: PeerStatus(aliases=["db", "cache"]))
            seen: list[Any] = []
            b.add_callback(seen.append)
            task = asyncio.create_task(b.run())
            await a.heartbeat()
            # Another peer's name or a name under it, reserved names and a bad label are refused;
            # repeats dropped.
            assert coord.peer_by_name("alpha").aliases == ["db", "www.alpha"]  # type: ignore[union-attr]
            await b.heartbeat()
            # "db" is alpha's: beta does not get it.
            assert coord.peer_by_name("beta").aliases == ["cache"]  # type: ignore[union-attr]
            # Pushed to the other peers (PeerInfo.aliases).
            await until(
                lambda: getattr(b.table.by_name("alpha"), "aliases", []) == ["db", "www.alpha"]
            )
            ip_a = coord.peer_by_name("alpha").mesh_ip  # type: ignore[union-attr]
            ip_b = coord.peer_by_name("beta").mesh_ip  # type: ignore[union-attr]
            records = {(r.name, r.ip) for r in (await a.dns()).records}
            assert ("db.tunnelmesh", ip_a) in records
            assert ("www.alpha.tunnelmesh", ip_a) in records
            assert ("cache.tunnelmesh", ip_b) in records
            assert not any(name == "db.tunnelmesh" and ip == ip_b for name, ip in records)
            await b.aclose()
            await task
            await a.aclose()
        # Stored: a restarted coordinator still answers them.
        async with CoordinatorServer(cfg) as server:
            rec = server.coordinator.peer_by_name("alpha")
            assert rec is not None and rec.aliases == ["db", "www.alpha"]

    run(main())


def _peer(name: str, pid: str, ip: str, aliases: list[str] | None = None) -> Any:
    from tunnelmesh.control.messages import PeerInfo

    return PeerInfo(
        name=name,
        peer_id=pid,
        public_key="ssh-ed25519 AAAA",
        wg_public_key="",
        mesh_ip=ip,
        aliases=aliases or [],
    )


def test_dns_backend_answers_aliases_and_never_lets_one_take_a_name() -> None:
    backend = CoordinatorBackend(networks=["10.42.0.0/16"])
    alpha = _peer("alpha", "A", "10.42.0.2", ["db", "www.alpha", "beta"])
    beta = _peer("beta", "B", "10.42.0.3", ["db"])
    backend.apply_push(Snapshot(peers=[alpha, beta], revision=1))
    assert backend.lookup("db", "A") == ["10.42.0.2"]
    assert backend.lookup("www.alpha", "A") == ["10.42.0.2"]
    assert backend.lookup("beta", "A") == ["10.42.0.3"]  # a name is never an alias's
    assert sorted(backend.lookup("10.42.0.2", "PTR") or []) == ["alpha", "db", "www.alpha"]
    # alpha drops "db": it goes away (beta's claim is not taken up until beta is pushed again)
    backend.apply_push(PeerUpserted(peer=_peer("alpha", "A", "10.42.0.2", ["web"]), revision=2))
    assert backend.lookup("db", "A") is None
    assert backend.lookup("web", "A") == ["10.42.0.2"]
    backend.apply_push(PeerUpserted(peer=beta, revision=3))
    assert backend.lookup("db", "A") == ["10.42.0.3"]
    # a peer named like an alias takes the name; the alias's owner leaving does not remove it
    backend.apply_push(PeerUpserted(peer=_peer("web", "W", "10.42.0.9"), revision=4))
    assert backend.lookup("web", "A") == ["10.42.0.9"]
    backend.apply_push(PeerGone(peer_id="A", name="alpha", revision=5))
    assert backend.lookup("web", "A") == ["10.42.0.9"]
    assert backend.lookup("alpha", "A") is None
    backend.apply_push(PeerGone(peer_id="B", name="beta", revision=6))
    assert backend.lookup("db", "A") is None


def test_sighup_reload_reports_a_bad_file_and_keeps_the_running_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tunnelmesh.cli.serve_cmd import _reload
    from tunnelmesh.errors import ConfigError

    class Server:
        reloaded: list[object] = []

        def reload(self, cfg: object) -> list[str]:
            self.reloaded.append(cfg)
            return ["filter rules (1, pushed to every peer)"]

    def bad() -> Any:
        raise ConfigError("invalid YAML", path="server.yaml")

    server = Server()
    _reload(server, bad)
    assert server.reloaded == []
    assert "config reload failed, keeping the running config" in capsys.readouterr().err
    _reload(server, lambda: "cfg")  # type: ignore[arg-type,return-value]
    assert server.reloaded == ["cfg"]
    assert "config reloaded: filter rules (1" in capsys.readouterr().out
