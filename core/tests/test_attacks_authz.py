"""The attack suite of issue 11 (authorization and identity): each attack is refused.

Every test plays an attacker (a stranger, a holder of the mesh join token, an ordinary peer)
against a real coordinator over loopback and checks both the answer and that nothing changed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from test_coord_api import TOKEN, Api, client, config
from tunnelmesh import Policy, hookimpl, route_policy
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.config import ServerConfig, load_server_config
from tunnelmesh.control.client import ApiRequestError, ControlClient
from tunnelmesh.coordinator.api import build_app, route_table
from tunnelmesh.coordinator.core import Coordinator
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.coordinator.sqlite import MIGRATIONS, SqliteStore
from tunnelmesh.errors import ConfigError, PluginError
from tunnelmesh.identity import Identity
from tunnelmesh.testing.authz import Callers, check_route_policies


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


class PolicyPlugin:
    """A plugin with one route of each policy, as a third-party plugin would declare them."""

    @hookimpl
    def tunnelmesh_register_coordinator_routes(
        self, app: web.Application, coordinator: Any
    ) -> None:
        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        for policy in Policy:
            if policy is Policy.JOIN:
                continue
            handler = route_policy(policy)(_copy(ok))
            app.router.add_get(f"/api/v1/test-plugin/{policy.value}/{{name}}", handler)


def _copy(fn: Any) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await fn(request)  # type: ignore[no-any-return]

    return handler


# --- every route declares a policy, and the server enforces it ----------------------------


def test_every_route_declares_a_policy_and_the_answers_match(tmp_path: Path) -> None:
    pm = make_plugin_manager(entry_points=False)
    pm.register(PolicyPlugin(), name="policy-test")

    async def main() -> None:
        cfg = config(tmp_path, auth_failures_burst=100_000)
        async with CoordinatorServer(cfg, pm=pm) as server:
            table = route_table(build_app(server.coordinator, pm))
            assert all(policy is not None for _, _, policy in table), table
            assert ("DELETE", "/api/v1/peers/{name}", Policy.SELF_OR_ADMIN) in table
            assert ("POST", "/api/v1/token/rotate", Policy.ADMIN) in table
            callers = await Callers.create(server, TOKEN)
            try:
                checked = await check_route_policies(server, callers, table)
            finally:
                await callers.aclose()
            assert len(checked) == len([r for r in table if r[0] != "HEAD"])

    run(main())


def test_a_route_without_a_policy_stops_the_coordinator_from_starting(tmp_path: Path) -> None:
    class Careless:
        @hookimpl
        def tunnelmesh_register_coordinator_routes(
            self, app: web.Application, coordinator: Any
        ) -> None:
            async def open_door(request: web.Request) -> web.Response:
                return web.json_response({})

            app.router.add_post("/api/v1/careless", open_door)

    pm = make_plugin_manager(entry_points=False)
    pm.register(Careless(), name="careless")
    coord = Coordinator(config(tmp_path))
    with pytest.raises(PluginError, match=r"POST /api/v1/careless"):
        build_app(coord, pm)


# --- the mesh join token is no operator credential ----------------------------------------


def test_token_holder_cannot_delete_a_peer_and_nothing_changes(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            a = await client(server, "alpha")
            api = Api(server)
            store = server.coordinator.store
            assert isinstance(store, SqliteStore)
            await server.coordinator.flush()
            before = await store.dump()
            status, body = await api.call("DELETE", "/api/v1/peers/alpha", token=TOKEN)
            assert status == 403 and body["error"] == "token_not_credential"
            assert server.coordinator.peer_by_name("alpha") is not None
            await server.coordinator.flush()
            assert await store.dump() == before
            await api.close()
            await a.aclose()

    run(main())


def test_a_peer_cannot_delete_another_peer(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            admin = await client(server, "admin-node")
            a = await client(server, "alpha")
            b = await client(server, "beta")
            with pytest.raises(ApiRequestError) as err:
                await b._call("DELETE", "/api/v1/peers/alpha", None)
            assert err.value.status == 403
            with pytest.raises(ApiRequestError) as err:  # nor free a name, nor rotate the token
                await b._call("POST", "/api/v1/token/rotate", None)
            assert err.value.status == 403
            assert server.coordinator.token_ok(TOKEN)
            assert server.coordinator.peer_by_name("alpha") is not None
            for c in (admin, a, b):
                await c.aclose()

    run(main())


# --- identity is the key: names stay with the key that held them ----------------------------


def test_another_key_cannot_take_a_freed_name(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path)
        owner = Identity.generate()
        async with CoordinatorServer(cfg) as server:
            admin = await client(server, "admin-node")
            exit_ = await client(server, "exit", owner)
            await admin._call("DELETE", "/api/v1/peers/exit", None)
            await exit_.aclose()
            await admin.aclose()
        async with CoordinatorServer(cfg) as server:  # the tombstone survives a restart
            coord = server.coordinator
            thief = ControlClient(
                server=server.url,
                identity=Identity.generate(),
                ca_pem=coord.ca.cert_pem if coord.ca else "",
                auth_token=TOKEN,
                name="exit",
                rename=False,
            )
            with pytest.raises(ApiRequestError) as err:
                await thief.register()
            assert err.value.status == 409 and err.value.error == "name_taken"
            assert "tunnelmesh peers release exit" in err.value.message
            assert coord.peer_by_name("exit") is None
            renamed = await client(server, "exit")  # with rename, it gets another name
            assert renamed.registration and renamed.registration.name == "exit-2"
            assert coord.peer_by_name("exit") is None
            assert "exit.tunnelmesh" not in {r.name for r in coord.dns_records()}
            back = await client(server, "exit", owner)  # the key that held it gets it back
            assert back.registration and back.registration.name == "exit"
            for c in (thief, renamed, back):
                await c.aclose()

    run(main())


def test_only_an_admin_releases_a_name(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            admin = await client(server, "admin-node")
            peer = await client(server, "peer")
            gone = await client(server, "gone")
            await gone.leave()
            with pytest.raises(ApiRequestError) as err:
                await peer._call("DELETE", "/api/v1/names/gone", None)
            assert err.value.status == 403
            with pytest.raises(ApiRequestError) as err:  # a live peer's name: delete it first
                await admin._call("DELETE", "/api/v1/names/peer", None)
            assert err.value.status == 409
            await admin._call("DELETE", "/api/v1/names/gone", None)
            other = await client(server, "gone")
            assert other.registration and other.registration.name == "gone"
            for c in (admin, peer, gone, other):
                await c.aclose()

    run(main())


def test_old_state_is_migrated_names_reserved_for_their_keys(tmp_path: Path) -> None:
    db = tmp_path / "state" / "state.db"
    db.parent.mkdir(mode=0o700)
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0])  # the schema of the release before names were reserved
    conn.execute(
        "INSERT INTO peers (peer_id, public_key, name, mesh_ip) VALUES (?, ?, ?, ?)",
        ("00112233aabbccdd", "ssh-ed25519 AAAA", "old-exit", "172.30.0.9"),
    )
    conn.commit()
    conn.close()

    async def main() -> None:
        store = SqliteStore(db)
        await store.open()
        assert await store.load_names() == {"old-exit": "00112233aabbccdd"}
        assert await store.delete_peer("00112233aabbccdd")
        assert await store.load_names() == {"old-exit": "00112233aabbccdd"}
        await store.close()

    run(main())
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()

    async def newer() -> None:
        with pytest.raises(Exception, match="newer than this tunnelmesh knows"):
            await SqliteStore(db).open()

    run(newer())


# --- admins are keys ------------------------------------------------------------------------


def test_an_admin_peers_glob_or_name_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    for entry in ("ops-*", "laptop", "SHA256:short"):
        path.write_text(f'auth_token: "{TOKEN}"\nadmin_peers: ["{entry}"]\n')
        with pytest.raises(ConfigError, match="names and globs are not accepted") as err:
            load_server_config(path)
        assert "admin_peers[0]" in str(err.value)


def test_admin_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path) -> None:
    ident = Identity.generate()
    key = tmp_path / "id_ed25519"
    ident.save(key)
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(key) + ".pub"], capture_output=True, text=True, check=True
    ).stdout
    printed = out.split()[1]
    assert printed.startswith("SHA256:") and printed == ident.fingerprint
    ServerConfig(auth_token=TOKEN, admin_peers=[printed])  # accepted as it is printed


def test_removing_an_admin_entry_demotes_at_reload(tmp_path: Path) -> None:
    ops = Identity.generate()

    async def main() -> None:
        cfg = config(tmp_path, admin_peers=[ops.fingerprint])
        async with CoordinatorServer(cfg) as server:
            o = await client(server, "ops", ops)
            a = await client(server, "alpha")
            await o._call("POST", "/api/v1/groups", None, body={"name": "first"})
            other = Identity.generate().peer_id
            changed = server.coordinator.apply_config(config(tmp_path, admin_peers=[other]))
            assert changed == ["ops"]
            with pytest.raises(ApiRequestError) as err:
                await o._call("POST", "/api/v1/groups", None, body={"name": "second"})
            assert err.value.status == 403
            # admin_peers was set when ops registered first: the first-peer rule made no admin,
            # so emptying the list leaves no one admin (not the first peer, not alpha)
            assert server.coordinator.apply_config(config(tmp_path, admin_peers=[])) == []
            for name in ("ops", "alpha"):
                rec = server.coordinator.peer_by_name(name)
                assert rec is not None and not server.coordinator.is_admin(rec)
            for c in (o, a):
                await c.aclose()

    run(main())


# --- device approval ------------------------------------------------------------------------


def test_a_new_key_waits_for_approval_and_sees_nothing_meanwhile(tmp_path: Path) -> None:
    boss = Identity.generate()

    async def main() -> None:
        cfg = config(tmp_path, admin_peers=[boss.fingerprint], approve_new_peers=True)
        async with CoordinatorServer(cfg) as server:
            coord = server.coordinator
            admin = await client(server, "boss", boss)
            assert admin.registration and not admin.registration.pending  # admins never wait
            newbie_key = Identity.generate()
            newbie = await client(server, "newbie", newbie_key)
            assert newbie.registration and newbie.registration.pending
            with pytest.raises(ApiRequestError) as err:
                await newbie.list_peers()
            assert err.value.status == 403 and err.value.error == "pending_approval"
            assert "tunnelmesh peers approve newbie" in err.value.message
            assert [p.name for p in (await admin.list_peers()).peers] == ["boss"]
            assert "newbie.tunnelmesh" not in {r.name for r in coord.dns_records()}
            assert not coord.groups.contains("everyone", newbie_key.peer_id)
            pending = await admin.request("GET", "/api/v1/pending")
            assert pending["pending"][0]["fingerprint"] == newbie_key.fingerprint
            # another waiting key cannot approve anyone, not even itself
            other = await client(server, "other")
            for who in ("newbie", "other"):
                with pytest.raises(ApiRequestError) as err:
                    await other.request("POST", f"/api/v1/peers/{who}/approve")
                assert err.value.status == 403
            await admin.request("POST", "/api/v1/peers/newbie/approve")
            again = await client(server, "newbie", newbie_key)  # signature only, now admitted
            assert again.registration and not again.registration.pending
            assert {p.name for p in (await again.list_peers()).peers} == {"boss", "newbie"}
            # an approved, ordinary peer cannot approve the other one either
            with pytest.raises(ApiRequestError) as err:
                await again.request("POST", "/api/v1/peers/other/approve")
            assert err.value.status == 403
            for c in (admin, newbie, other, again):
                await c.aclose()
        async with CoordinatorServer(cfg) as server:  # approval and waiting are stored
            assert [r.name for r in server.coordinator.pending_peers()] == ["other"]

    run(main())


def test_a_rotated_token_outlives_a_restart_and_joined_peers_stay(tmp_path: Path) -> None:
    ident = Identity.generate()

    async def main() -> None:
        cfg = config(tmp_path)
        async with CoordinatorServer(cfg) as server:
            admin = await client(server, "boss")
            old = await client(server, "old", ident)
            got = await admin.request("POST", "/api/v1/token/rotate")
            new_token = got["token"]
            assert new_token != TOKEN and server.coordinator.token_ok(new_token)
            assert not server.coordinator.token_ok(TOKEN)
            await old.heartbeat()  # a joined peer is not disturbed
            for c in (admin, old):
                await c.aclose()
        async with CoordinatorServer(cfg) as server:  # server.yaml still has the old token
            coord = server.coordinator
            assert coord.token_ok(new_token) and not coord.token_ok(TOKEN)
            api = Api(server)
            body = await api.signed(Identity.generate(), "late")
            status, answer = await api.call("POST", "/api/v1/register", body, token=TOKEN)
            assert status == 401 and answer["error"] == "bad_token"
            await api.close()
            back = ControlClient(  # a joined key needs no token at all
                server=server.url,
                identity=ident,
                ca_pem=coord.ca.cert_pem if coord.ca else "",
                name="old",
            )
            reg = await back.register()
            assert reg.name == "old"
            await back.aclose()

    run(main())
