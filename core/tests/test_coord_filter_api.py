"""Coordinator filter rules at run time: the admin API, temporary rules, restarts, the push to
the peers and their filter engines (loopback only).

Every route is also walked as stranger / token holder / peer / admin by
``test_attacks_authz.py``; here each is called with real bodies.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_coord_api import TOKEN, Api, client, config, run, until
from tunnelmesh.config import FilterConfig, FilterRule
from tunnelmesh.control.messages import PolicyRule
from tunnelmesh.control.peertable import FilterRulesChanged
from tunnelmesh.coordinator.filterbook import META_KEY
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.filter import FilterService

RULES = "/api/v1/filter/rules"


async def _callers(server: CoordinatorServer) -> tuple[Api, str, str, Any, Any]:
    """The raw API, the admin's and a member's session tokens, and their clients."""
    admin = await client(server, "boss")
    member = await client(server, "member")
    assert admin.registration is not None and admin.registration.is_admin
    assert member.registration is not None and not member.registration.is_admin
    return (
        Api(server),
        admin.registration.session_token,
        member.registration.session_token,
        admin,
        member,
    )


def test_admin_adds_lists_and_removes_rules_members_only_see(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            api, admin, member, a, m = await _callers(server)
            m_id = m.registration.peer_id
            # a member and a token holder may not add; a stranger is not even asked
            body = {"port": 5432, "action": "deny"}
            assert (await api.call("POST", RULES, body, token=member))[0] == 403
            assert (await api.call("POST", RULES, body, token=TOKEN))[0] == 403
            assert (await api.call("POST", RULES, body))[0] == 401
            assert (await api.call("GET", RULES))[0] == 401
            assert server.coordinator.filters.rules() == []
            # the admin adds one (the source peer named by name, stored by peer ID)
            st, got = await api.call(
                "POST", RULES, {**body, "source_peer": "member", "ttl": 0}, token=admin
            )
            assert st == 201, got
            assert got["source_peer"] == m_id and got["source_name"] == "member"
            assert got["origin"] == "api" and got["expires"] == 0
            assert got["created_by"] == a.registration.peer_id
            # every member sees it
            st, listed = await api.call("GET", RULES, token=member)
            assert st == 200 and listed["pushed"] == 1
            assert [(r["port"], r["action"], r["source_peer"]) for r in listed["rules"]] == [
                (5432, "deny", m_id)
            ]
            # a member may not remove it; the admin may, once
            path = f"{RULES}/tcp/5432?source_peer={m_id}"
            assert (await api.call("DELETE", path, token=member))[0] == 403
            st, removed = await api.call("DELETE", path, token=admin)
            assert st == 200 and removed["removed"]["port"] == 5432
            st, again = await api.call("DELETE", path, token=admin)
            assert st == 404 and again["error"] == "no_such_rule"
            assert server.coordinator.filters.rules() == []
            await api.close()
            await a.aclose()
            await m.aclose()

    run(main())


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": 22, "protocol": "icmp"}, "protocol"),
        ({"port": 22, "action": "reject"}, "action"),
        ({"port": 22, "ttl": -1}, "ttl"),
        ({"port": 22, "ttl": 400 * 86400}, "ttl"),
        ({"port": "22"}, "port"),
        ({"port": 22, "colour": "red"}, "colour"),
        ({}, "port"),
    ],
)
def test_bad_rules_are_400_counted_and_change_nothing(
    tmp_path: Path, body: dict[str, Any], says: str
) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            api, admin, _, a, m = await _callers(server)
            coord = server.coordinator
            before = coord.stats["bad_requests"]
            st, got = await api.call("POST", RULES, body, token=admin)
            assert st == 400 and says in got["message"], got
            assert coord.stats["bad_requests"] == before + 1
            assert coord.filters.rules() == []
            assert await coord.store.get_meta(META_KEY) is None
            st, got = await api.call("POST", RULES, raw=b"{not json", token=admin)
            assert st == 400 and coord.stats["bad_requests"] == before + 2
            st, got = await api.call("DELETE", f"{RULES}/icmp/22", token=admin)
            assert st == 400 and "protocol" in got["message"]
            st, got = await api.call("DELETE", f"{RULES}/tcp/x", token=admin)
            assert st == 400 and "port" in got["message"]
            # an unknown source peer is a 404, and nothing changed either
            st, got = await api.call(
                "POST", RULES, {"port": 22, "source_peer": "nobody"}, token=admin
            )
            assert st == 404 and coord.filters.rules() == []
            await api.close()
            await a.aclose()
            await m.aclose()

    run(main())


def test_server_yaml_rules_and_api_rules_combine(tmp_path: Path) -> None:
    async def main() -> None:
        deny = FilterRule(port=3306, action="deny")
        cfg = config(tmp_path, filter=FilterConfig(rules=[deny]))
        async with CoordinatorServer(cfg) as server:
            api, admin, _, a, m = await _callers(server)
            coord = server.coordinator
            # the API cannot add or remove a server.yaml key
            st, got = await api.call("POST", RULES, {"port": 3306}, token=admin)
            assert st == 409 and got["error"] == "config_rule" and "SIGHUP" in got["message"]
            st, got = await api.call("DELETE", f"{RULES}/tcp/3306", token=admin)
            assert st == 409 and got["error"] == "config_rule"
            # an API rule beside it: both pushed, server.yaml's first
            assert (await api.call("POST", RULES, {"port": 8080}, token=admin))[0] == 201
            assert coord.filters.rules() == [
                PolicyRule(port=3306, action="deny"),
                PolicyRule(port=8080),
            ]
            # a reload that brings server.yaml a rule with the API rule's key: server.yaml's
            # is pushed, the API rule is kept and listed as shadowed
            both = FilterConfig(rules=[deny, FilterRule(port=8080, action="deny")])
            server.reload(msgspec.structs.replace(cfg, filter=both))
            assert coord.filters.rules() == [
                PolicyRule(port=3306, action="deny"),
                PolicyRule(port=8080, action="deny"),
            ]
            listed = (await api.call("GET", RULES, token=admin))[1]["rules"]
            assert [(r["origin"], r["port"], r["shadowed"]) for r in listed] == [
                ("config", 3306, False),
                ("config", 8080, False),
                ("api", 8080, True),
            ]
            # the file drops it again: the API rule applies again
            server.reload(msgspec.structs.replace(cfg, filter=FilterConfig(rules=[deny])))
            assert coord.filters.rules()[-1] == PolicyRule(port=8080)
            await api.close()
            await a.aclose()
            await m.aclose()

    run(main())


def test_a_rule_reaches_a_peers_filter_engine_at_once_and_expires(tmp_path: Path) -> None:
    """The admin's rule is pushed to a peer and its filter refuses the port; a temporary rule
    disappears from the coordinator and from the peer when its time is up."""

    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            api, admin, _, a, m = await _callers(server)
            service = FilterService()
            seen: list[Any] = []

            def on_change(ch: Any) -> None:
                if isinstance(ch, FilterRulesChanged):
                    seen.append(ch.rules)
                    service.set_coordinator_rules(ch.rules)

            m.add_callback(on_change)
            task = asyncio.create_task(m.run())
            await until(lambda: bool(seen))  # the snapshot's (empty) rules
            assert service.engine.decide("tcp", 8080, "boss")
            started = time.monotonic()
            body = {"port": 8080, "action": "deny", "ttl": 2}
            st, rule = await api.call("POST", RULES, body, token=admin)
            assert st == 201 and rule["expires"] > time.time()
            await until(lambda: not service.engine.decide("tcp", 8080, "boss"), timeout=2.0)
            took = time.monotonic() - started
            print(f"rule added -> enforced by the peer's engine: {took * 1000:.0f} ms")
            assert seen[-1][0].expires == rule["expires"]  # the peer knows when it ends
            # at its expiry the coordinator removes it and pushes the empty list
            await until(lambda: server.coordinator.filters.rules() == [], timeout=5.0)
            await until(lambda: seen[-1] == (), timeout=2.0)
            assert service.engine.decide("tcp", 8080, "boss")
            assert server.coordinator.filters.expired == 1
            assert (await api.call("GET", RULES, token=admin))[1]["rules"] == []
            await m.aclose()
            await task
            await api.close()
            await a.aclose()

    run(main())


def test_api_rules_survive_a_restart_expired_ones_do_not(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path)
        async with CoordinatorServer(cfg) as server:
            api, admin, _, a, m = await _callers(server)
            assert (await api.call("POST", RULES, {"port": 22}, token=admin))[0] == 201
            body = {"port": 23, "ttl": 1}
            assert (await api.call("POST", RULES, body, token=admin))[0] == 201
            await api.close()
            await a.aclose()
            await m.aclose()
        await asyncio.sleep(1.2)  # the temporary rule's time passes while it is down
        async with CoordinatorServer(cfg) as server:
            assert server.coordinator.filters.rules() == [PolicyRule(port=22)]
            # and a peer that connects gets it right after its snapshot
            m = await client(server, "member", ident=m.identity)
            seen: list[Any] = []
            m.add_callback(seen.append)
            task = asyncio.create_task(m.run())
            await until(lambda: m.table.filter_rules == (PolicyRule(port=22),))
            await m.aclose()
            await task

    run(main())


def test_a_peer_drops_an_expired_pushed_rule_by_itself() -> None:
    """A rule whose expiry passed while the coordinator was away is not enforced."""
    now = time.time()
    service = FilterService()
    service.set_coordinator_rules(
        [
            PolicyRule(port=22, action="deny", expires=now - 1),
            PolicyRule(port=23, action="deny", expires=now + 3600),
        ]
    )
    assert service.engine.decide("tcp", 22, "x")
    assert not service.engine.decide("tcp", 23, "x")
    assert [(r.layer, r.port) for r in service.engine.stats().rules] == [("coordinator", 23)]
