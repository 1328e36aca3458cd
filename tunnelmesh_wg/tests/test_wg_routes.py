"""The coordinator's WireGuard client API over loopback: every route as admin, member and
stranger; name and IP collisions; bad keys; the push to peers (preshared key to the
concentrator only); disable/enable/remove/expiry pushed within 2 s; status from the
concentrator's heartbeat; a restart keeps the clients."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.config import ServerConfig
from tunnelmesh.control.client import ApiRequestError, ControlClient, PeerStatus, fetch_ca
from tunnelmesh.control.messages import ClientStatus, ConcentratorStatus
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.coordinator.sqlite import SqliteStore
from tunnelmesh.identity import Identity
from tunnelmesh_wg.clientconf import generate_keypair, generate_preshared_key
from tunnelmesh_wg.routes import PANEL_COLUMNS

from tunnelmesh_wg import plugin

TOKEN = "wg-routes-token-0123456789abcdef"
ENDPOINT = "198.51.100.7:51820"
PATH = "/api/v1/wg/clients"


def config(tmp_path: Path, **kw: Any) -> ServerConfig:
    kw.setdefault("heartbeat_interval", 10.0)
    return ServerConfig(
        auth_token=TOKEN,
        listen="127.0.0.1:0",
        stun_listen="127.0.0.1:0",
        data_dir=str(tmp_path / "state"),
        auth_failures_burst=100_000,
        **kw,
    )


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait for ``pred``; return the seconds it took."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def wg_pm() -> Any:
    pm = make_plugin_manager(entry_points=False)
    pm.register(plugin, "wg")
    return pm


@dataclass
class Mesh:
    server: CoordinatorServer
    admin: ControlClient
    member: ControlClient
    conc: ControlClient
    stranger: aiohttp.ClientSession
    status: ConcentratorStatus

    @property
    def coord(self) -> Any:
        return self.server.coordinator

    async def stranger_call(self, method: str, path: str, body: Any = None) -> int:
        async with self.stranger.request(
            method, self.server.url + path, json=body, server_hostname=COORDINATOR_NAME
        ) as resp:
            await resp.read()
            return resp.status

    async def add(self, name: str = "phone", **kw: Any) -> dict[str, Any]:
        kw.setdefault("public_key", generate_keypair()[1])
        got: dict[str, Any] = await self.admin.request("POST", PATH, {"name": name, **kw})
        return got


async def peer(server: CoordinatorServer, name: str, **kw: Any) -> ControlClient:
    ca = await fetch_ca(server.url, TOKEN)
    c = ControlClient(
        server=server.url,
        identity=Identity.generate(),
        ca_pem=ca,
        auth_token=TOKEN,
        name=name,
        **kw,
    )
    await c.register()
    return c


@asynccontextmanager
async def mesh(tmp_path: Path, **kw: Any) -> AsyncIterator[Mesh]:
    async with CoordinatorServer(config(tmp_path, **kw), pm=wg_pm()) as server:
        status = ConcentratorStatus(endpoint=ENDPOINT)
        admin = await peer(server, "boss")  # the first peer is admin
        member = await peer(server, "member")
        conc = await peer(server, "conc", status=lambda: PeerStatus(concentrator=status))
        await conc.heartbeat()
        ca = await fetch_ca(server.url, TOKEN)
        stranger = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(ca)))
        m = Mesh(server, admin, member, conc, stranger, status)
        try:
            yield m
        finally:
            for c in (admin, member, conc):
                await c.aclose()
            await stranger.close()


async def dump(m: Mesh) -> list[str]:
    store = m.coord.store
    assert isinstance(store, SqliteStore)
    return await store.dump()


# --- policies -------------------------------------------------------------------------------


def test_every_route_as_admin_member_and_stranger(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            await m.add("phone")
            public = generate_keypair()[1]
            calls: list[tuple[str, str, Any, bool]] = [  # method, path, body, admin only
                ("GET", PATH, None, False),
                ("GET", f"{PATH}/phone", None, False),
                ("POST", PATH, {"name": "laptop", "public_key": public}, True),
                ("POST", f"{PATH}/phone/disable", None, True),
                ("POST", f"{PATH}/phone/enable", None, True),
                ("DELETE", f"{PATH}/phone", None, True),
            ]
            for method, path, body, admin_only in calls:
                before = await dump(m)
                assert await m.stranger_call(method, path, body) == 401, (method, path)
                # the mesh join token is no credential either
                async with m.stranger.request(
                    method,
                    m.server.url + path,
                    json=body,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    server_hostname=COORDINATOR_NAME,
                ) as resp:
                    assert resp.status == 403, (method, path)
                if admin_only:
                    with pytest.raises(ApiRequestError) as refused:
                        await m.member.request(method, path, body)
                    assert refused.value.status == 403, (method, path)
                    with pytest.raises(ApiRequestError) as refused:
                        await m.conc.request(method, path, body)  # the concentrator neither
                    assert refused.value.status == 403
                    assert await dump(m) == before, f"a refused {method} {path} changed state"
                else:
                    await m.member.request(method, path, body)
                await m.admin.request(method, path, body)
            names = [c["name"] for c in (await m.member.request("GET", PATH))["clients"]]
            assert names == ["laptop"]

    run(main())


def test_routes_declare_their_policies() -> None:
    from aiohttp import web
    from tunnelmesh import Policy
    from tunnelmesh.coordinator.api import route_table
    from tunnelmesh_wg.routes import install

    app = web.Application()
    install(app, None)  # type: ignore[arg-type]
    assert set(route_table(app)) == {
        ("GET", "/api/v1/wg/clients", Policy.PEER),
        ("HEAD", "/api/v1/wg/clients", Policy.PEER),
        ("POST", "/api/v1/wg/clients", Policy.ADMIN),
        ("GET", "/api/v1/wg/clients/{client}", Policy.PEER),
        ("HEAD", "/api/v1/wg/clients/{client}", Policy.PEER),
        ("DELETE", "/api/v1/wg/clients/{client}", Policy.ADMIN),
        ("POST", "/api/v1/wg/clients/{client}/enable", Policy.ADMIN),
        ("POST", "/api/v1/wg/clients/{client}/disable", Policy.ADMIN),
    }


# --- adding ---------------------------------------------------------------------------------


def test_add_gives_a_mesh_ip_a_dns_name_and_what_the_config_needs(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            public = generate_keypair()[1]
            got = await m.add("phone", public_key=public)
            client = got["client"]
            assert client["public_key"] == public and client["kind"] == "wireguard"
            assert ipaddress.ip_address(client["mesh_ip"]) in ipaddress.ip_network(got["mesh_cidr"])
            peer_ips = {p.mesh_ip for p in m.coord.peers.values()}
            assert client["mesh_ip"] not in peer_ips
            conc = got["concentrator"]
            assert conc["name"] == "conc" and conc["endpoint"] == ENDPOINT
            info = await m.member.get_peer("conc")
            assert conc["wg_public_key"] == info.wg_public_key
            assert conc["mesh_ip"] == info.mesh_ip
            assert client["concentrator"] == info.peer_id
            assert client["created_by"] == m.admin.identity.peer_id
            assert "preshared_key" not in client
            records = {r.name: r.ip for r in (await m.member.dns()).records}
            assert records[f"phone.{got['domain']}"] == client["mesh_ip"]
            shown = await m.member.request("GET", f"{PATH}/phone")
            assert shown["concentrator_name"] == "conc" and shown["active"] is True
            listed = await m.member.list_peers()
            assert [c.name for c in listed.clients] == ["phone"]

    run(main())


def test_names_are_unique_among_peers_and_clients(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            await m.add("phone")
            for name, status, error in (
                ("member", 409, "name_taken"),  # a peer's name
                ("phone", 409, "name_taken"),  # another client's
                ("admin", 400, "bad_name"),  # reserved
                ("Phone", 400, "bad_name"),  # not a lower-case label
                ("-x", 400, "bad_name"),
                ("a" * 64, 400, "bad_name"),
            ):
                before = await dump(m)
                with pytest.raises(ApiRequestError) as refused:
                    await m.add(name)
                assert (refused.value.status, refused.value.error) == (status, error), name
                assert await dump(m) == before
            # a peer cannot take a client's name: renamed, or refused when it asks not to be
            taker = await peer(m.server, "phone")
            assert taker.registration is not None and taker.registration.name == "phone-2"
            await taker.aclose()
            ca = await fetch_ca(m.server.url, TOKEN)
            strict = ControlClient(
                server=m.server.url,
                identity=Identity.generate(),
                ca_pem=ca,
                auth_token=TOKEN,
                name="phone",
                rename=False,
            )
            with pytest.raises(ApiRequestError) as refused:
                await strict.register()
            assert refused.value.status == 409
            await strict.aclose()
            # an admin cannot release a live client's name as if its key had left
            with pytest.raises(ApiRequestError) as refused:
                await m.admin.request("DELETE", "/api/v1/names/phone")
            assert refused.value.status == 409
            # removing the client frees its name for a new client (or a peer)
            await m.admin.request("DELETE", f"{PATH}/phone")
            await m.add("phone")

    run(main())


def test_a_key_is_one_client_and_never_a_peer(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            public = generate_keypair()[1]
            await m.add("phone", public_key=public)
            with pytest.raises(ApiRequestError) as refused:
                await m.add("tablet", public_key=public)
            assert (refused.value.status, refused.value.error) == (409, "key_taken")
            conc_key = (await m.member.get_peer("conc")).wg_public_key
            with pytest.raises(ApiRequestError) as refused:
                await m.add("tablet", public_key=conc_key)
            assert refused.value.status == 409

    run(main())


def test_bad_keys_get_a_clear_400_are_counted_and_change_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            good = generate_keypair()[1]
            raw = base64.b64decode(good)
            bad = {
                "not base64": "this is not a key at all, not base64 !!!!!!!",
                "31 bytes": base64.b64encode(raw[:31]).decode(),
                "33 bytes": base64.b64encode(raw + b"x").decode(),
                "all zeros": base64.b64encode(bytes(32)).decode(),
                "not canonical": good[:-2] + ("B=" if good[-2] != "B" else "C="),
                "an ssh key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG3",
                "empty": "",
            }
            stats = m.coord.clients.stats
            for why, key in bad.items():
                before = await dump(m)
                refused_before = stats["refused"]
                with pytest.raises(ApiRequestError) as refused:
                    await m.add("phone", public_key=key)
                assert refused.value.status == 400, why
                assert refused.value.error == "bad_key", why
                assert "key" in refused.value.message, why
                assert stats["refused"] == refused_before + 1, why
                assert await dump(m) == before, why
            with pytest.raises(ApiRequestError) as refused:
                await m.add("phone", public_key=good, preshared_key="short")
            assert (refused.value.status, refused.value.error) == (400, "bad_key")
            assert "preshared key" in refused.value.message
            for body in ({"name": "phone"}, {"name": "phone", "public_key": good, "x": 1}):
                with pytest.raises(ApiRequestError) as refused:
                    await m.admin.request("POST", PATH, body)
                assert refused.value.status == 400
            assert m.coord.clients.refused_by["bad_key"] == len(bad) + 1
            assert m.coord.clients.refused_by["malformed"] == 2
            assert m.coord.clients.records == {}
            # and the counts reach /metrics
            from tunnelmesh.metrics.coordinator import CoordinatorCollector

            samples = {
                (s.name, tuple(s.labels.items())): s.value
                for fam in CoordinatorCollector(m.coord).collect()
                for s in fam.samples
            }
            refused = "tunnelmesh_coordinator_client_refused_total"
            assert samples[(refused, (("reason", "bad_key"),))] == len(bad) + 1
            assert samples[("tunnelmesh_coordinator_clients", (("state", "active"),))] == 0

    run(main())


def test_concentrator_exit_and_expiry_are_checked(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            cases = [
                ({"concentrator": "member"}, 409, "not_a_concentrator"),
                ({"concentrator": "nobody"}, 404, "no_such_peer"),
                ({"exit": "member"}, 409, "not_an_exit"),
                ({"exit": "nobody"}, 404, "no_such_peer"),
                ({"expires_at": time.time() - 5}, 400, "bad_expiry"),
                ({"expires_at": time.time() + 11 * 365 * 86400}, 400, "bad_expiry"),
            ]
            for extra, status, error in cases:
                with pytest.raises(ApiRequestError) as refused:
                    await m.add("phone", **extra)
                assert (refused.value.status, refused.value.error) == (status, error), extra
            got = await m.add("phone", concentrator=m.conc.identity.peer_id)
            assert got["concentrator"]["name"] == "conc"
            exit_node = await peer(
                m.server, "exit", status=lambda: PeerStatus(allow_exit_traffic=True)
            )
            await exit_node.heartbeat()
            got = await m.add("laptop", exit="exit")
            assert got["exit_name"] == "exit"
            assert got["client"]["exit_peer"] == exit_node.identity.peer_id
            await exit_node.aclose()
            # a second concentrator: the admin must choose
            second = await peer(
                m.server,
                "conc2",
                status=lambda: PeerStatus(
                    concentrator=ConcentratorStatus(endpoint="vpn.example.org:443")
                ),
            )
            await second.heartbeat()
            with pytest.raises(ApiRequestError) as refused:
                await m.add("tablet")
            assert refused.value.error == "choose_concentrator"
            assert "conc, conc2" in refused.value.message
            got = await m.add("tablet", concentrator="conc2")
            assert got["concentrator"]["endpoint"] == "vpn.example.org:443"
            await second.aclose()

    run(main())


def test_a_concentrator_endpoint_must_be_host_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            for bad in ("no-port", "127.0.0.1:51820", "vpn..example:1", "host:0", "a b:1"):
                m.status.endpoint = bad
                with pytest.raises(ApiRequestError) as refused:
                    await m.conc.heartbeat()
                assert refused.value.error == "bad_endpoint", bad
            assert m.coord.peer_by_name("conc").concentrator_endpoint == ENDPOINT

    run(main())


# --- the push to peers ----------------------------------------------------------------------


def test_clients_reach_every_peer_and_the_preshared_key_only_the_concentrator(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            psk = generate_preshared_key()
            await m.add("phone", preshared_key=psk)
            tasks = [asyncio.create_task(c.run()) for c in (m.member, m.conc)]
            try:
                await until(lambda: bool(m.member.table.clients) and bool(m.conc.table.clients))
                (seen,) = m.member.table.clients or ()
                (served,) = m.conc.table.clients or ()
                assert seen.name == "phone" and seen.preshared_key == ""
                assert served.preshared_key == psk
                assert seen.concentrator == served.concentrator == m.conc.identity.peer_id
                assert seen.live(time.time())
                # a change reaches the connected peers the same way
                await m.add("laptop", preshared_key=generate_preshared_key())
                await until(lambda: len(m.member.table.clients or ()) == 2)
                assert all(not c.preshared_key for c in m.member.table.clients or ())
                await until(lambda: len(m.conc.table.clients or ()) == 2)
                assert all(c.preshared_key for c in m.conc.table.clients or ())
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    run(main())


def test_disable_enable_remove_and_expiry_reach_peers_within_2_seconds(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            await m.add("phone")
            task = asyncio.create_task(m.member.run())

            def phone() -> Any:
                return next((c for c in m.member.table.clients or () if c.name == "phone"), None)

            try:
                await until(lambda: phone() is not None)
                await m.admin.request("POST", f"{PATH}/phone/disable")
                assert await until(lambda: not phone().active, 2.0) < 2.0
                records = {r.name for r in (await m.member.dns()).records}
                assert "phone.tunnelmesh" not in records
                await m.admin.request("POST", f"{PATH}/phone/enable")
                await until(lambda: phone().active, 2.0)
                await m.admin.request("DELETE", f"{PATH}/phone")
                await until(lambda: phone() is None, 2.0)
                assert [c.name for c in (await m.member.list_peers()).clients] == []
                # expiry: enforced by the coordinator when it passes, no admin action
                await m.add("tablet", expires_at=time.time() + 3.0)
                await until(lambda: any(c.name == "tablet" for c in m.member.table.clients or ()))
                seen = time.time()
                (tablet,) = m.member.table.clients or ()
                # pushed (and judged) before it was seen: active unless the machine was so slow
                # that the expiry passed first
                assert tablet.active or seen >= tablet.expires_at
                wait = tablet.expires_at - time.time() + 3.0
                await until(lambda: not m.member.table.clients[0].active, wait)  # type: ignore[index]
                assert time.time() >= tablet.expires_at
                shown = await m.member.request("GET", f"{PATH}/tablet")
                assert shown["active"] is False and shown["enabled"] is True
                assert m.coord.clients.stats["expired"] == 1
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    run(main())


def test_the_concentrator_reports_its_own_clients_handshakes_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            cid = (await m.add("phone"))["client"]["client_id"]
            m.status.clients = {cid: ClientStatus(latest_handshake=1234.5, rx_bytes=7)}
            await m.conc.heartbeat()
            shown = await m.member.request("GET", f"{PATH}/phone")
            assert shown["status"]["latest_handshake"] == 1234.5
            # the dashboard panel's columns are all in each row, flat and readable
            assert {key for key, _ in PANEL_COLUMNS} <= set(shown)
            assert shown["latest_handshake_utc"] == "1970-01-01 00:20:34Z"
            assert shown["state"] == "active" and shown["expires_utc"] == "never"
            # another peer speaking for that client is ignored
            liar = ConcentratorStatus(
                endpoint="192.0.2.1:51820", clients={cid: ClientStatus(latest_handshake=9.0)}
            )
            other = await peer(m.server, "other", status=lambda: PeerStatus(concentrator=liar))
            await other.heartbeat()
            shown = await m.member.request("GET", f"{PATH}/phone")
            assert shown["status"]["latest_handshake"] == 1234.5
            listed = (await m.member.list_peers()).clients
            assert listed[0].status is not None and listed[0].status.rx_bytes == 7
            await other.aclose()

    run(main())


def test_a_restart_keeps_clients_ips_and_names(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path) as m:
            psk = generate_preshared_key()
            first = (await m.add("phone", preshared_key=psk))["client"]
            await m.admin.request("POST", f"{PATH}/phone/disable")
            admin_id = m.admin.identity
        async with CoordinatorServer(config(tmp_path), pm=wg_pm()) as server:
            rec = server.coordinator.clients.by_name("phone")
            assert rec is not None
            assert (rec.mesh_ip, rec.client_id, rec.preshared_key) == (
                first["mesh_ip"],
                first["client_id"],
                psk,
            )
            assert not rec.enabled
            assert server.coordinator.alloc.is_used(rec.mesh_ip)
            assert server.coordinator.name_owner("phone") == rec.client_id
            ca = await fetch_ca(server.url, TOKEN)
            again = ControlClient(
                server=server.url, identity=admin_id, ca_pem=ca, auth_token=TOKEN, name="boss"
            )
            await again.register()
            await again.request("POST", f"{PATH}/phone/enable")
            assert server.coordinator.clients.by_name("phone").enabled
            await again.aclose()

    run(main())


def test_with_the_store_down_changes_get_503_with_retry_after(tmp_path: Path) -> None:
    """Adding, disabling and removing a client while the database does not answer: 503
    store_unavailable with Retry-After, as every write then, without the store's own words;
    nothing changed."""

    async def main() -> None:
        async with mesh(tmp_path) as m:
            await m.add("phone")
            await m.coord.store.close()  # the database is gone
            auth = {"Authorization": f"Bearer {m.admin.session_token}"}
            for method, path, body in (
                ("POST", PATH, {"name": "tablet", "public_key": generate_keypair()[1]}),
                ("POST", f"{PATH}/phone/disable", None),
                ("DELETE", f"{PATH}/phone", None),
            ):
                async with m.stranger.request(
                    method,
                    m.server.url + path,
                    json=body,
                    headers=auth,
                    server_hostname=COORDINATOR_NAME,
                ) as resp:
                    answer = await resp.json()
                    assert resp.status == 503 and answer["error"] == "store_unavailable", answer
                    assert resp.headers.get("Retry-After") == "5"
                    assert "not open" not in answer["message"]  # the store's words are logged
            phone = m.coord.clients.by_name("phone")
            assert phone is not None and phone.enabled
            assert m.coord.clients.by_name("tablet") is None
            await m.coord.store.open()

    run(main())
