"""The coordinator's HTTPS API and push channel over loopback (127.0.0.1, ephemeral ports)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from tunnelmesh.config import JoinMesh, ServerConfig
from tunnelmesh.control.client import ApiRequestError, ControlClient, fetch_ca
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.control.peertable import PeerAdded, PeerChanged, PeerRemoved, RendezvousRequested
from tunnelmesh.coordinator.auth import registration_message, token_binding
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.coordinator.sqlite import SqliteStore
from tunnelmesh.errors import TunnelmeshError
from tunnelmesh.identity import Identity

TOKEN = "test-token-0123456789abcdef"


def config(tmp_path: Path, **kw: Any) -> ServerConfig:
    kw.setdefault("heartbeat_interval", 10.0)
    return ServerConfig(
        auth_token=TOKEN,
        listen="127.0.0.1:0",
        stun_listen="127.0.0.1:0",
        data_dir=str(tmp_path / "state"),
        **kw,
    )


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Api:
    """Raw HTTP access with the mesh CA, to send requests a well-behaved client would not."""

    def __init__(self, server: CoordinatorServer) -> None:
        assert server.coordinator.ca is not None
        self.url = server.url
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(server.coordinator.ca.cert_pem))
        )

    async def call(
        self, method: str, path: str, body: Any = None, token: str = "", raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(
            method, self.url + path, data=data, headers=headers, server_hostname=COORDINATOR_NAME
        ) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text.startswith(("{", "[")) else text

    async def signed(
        self,
        ident: Identity,
        name: str,
        *,
        token: str = TOKEN,
        sign_token: str = TOKEN,
        signer: Identity | None = None,
        nonce: str | None = None,
    ) -> dict[str, Any]:
        if nonce is None:
            status, ch = await self.call("POST", "/api/v1/register/challenge")
            # When the source is over its allowance, sign a made-up nonce instead.
            nonce = ch["nonce"] if status == 200 else base64.b64encode(b"\x07" * 32).decode()
        raw_nonce = base64.b64decode(nonce)
        msg = registration_message(
            raw_nonce, name, ident.public_openssh, token_binding(sign_token, raw_nonce)
        )
        sig = (signer or ident).sign(msg)
        return {
            "name": name,
            "public_key": ident.public_openssh,
            "nonce": nonce,
            "signature": base64.b64encode(sig).decode(),
        }

    async def close(self) -> None:
        await self.http.close()


async def client(
    server: CoordinatorServer, name: str, ident: Identity | None = None, **kw: Any
) -> ControlClient:
    ca = await fetch_ca(server.url, TOKEN)
    c = ControlClient(
        server=server.url,
        identity=ident or Identity.generate(),
        ca_pem=ca,
        auth_token=TOKEN,
        name=name,
        **kw,
    )
    await c.register()
    return c


# --- first contact ----------------------------------------------------------------------------


def test_fetch_ca_checks_the_proof(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            assert server.coordinator.ca is not None
            assert await fetch_ca(server.url, TOKEN) == server.coordinator.ca.cert_pem
            with pytest.raises(TunnelmeshError, match="could not prove"):
                await fetch_ca(server.url, "another-token-0123456789")

    run(main())


def test_tls_is_verified_against_the_pinned_ca(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            CoordinatorServer(config(tmp_path / "a")) as a,
            CoordinatorServer(config(tmp_path / "b")) as b,
        ):
            ca_b = await fetch_ca(b.url, TOKEN)
            # Talking to coordinator A while trusting B's CA must fail the TLS check.
            c = ControlClient(
                server=a.url, identity=Identity.generate(), ca_pem=ca_b, auth_token=TOKEN, name="x"
            )
            async with c:
                with pytest.raises(TunnelmeshError, match="cannot reach"):
                    await c.register()
            assert not a.coordinator.peers

    run(main())


# --- registration -----------------------------------------------------------------------------


def test_register_gives_ip_dns_and_admin_to_first(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            a = await client(server, "alpha")
            b = await client(server, "beta")
            o = await client(server, "ops-1")
            regs = [a.registration, b.registration, o.registration]
            # No admin_peers: the first key to register is admin (by its peer ID).
            assert [r.is_admin for r in regs if r] == [True, False, False]
            assert a.registration and a.registration.mesh_cidr == "172.30.0.0/16"
            ips = {r.mesh_ip for r in regs if r}
            assert len(ips) == 3
            dns = await b.dns()
            names = {r.name: r.ip for r in dns.records}
            assert names["alpha.tunnelmesh"] == a.registration.mesh_ip
            assert "this.tunnelmesh" not in names  # no coordinator peer here
            for c in (a, b, o):
                await c.aclose()

    run(main())


def test_admin_peers_by_peer_id_or_fingerprint_replace_the_first_peer_rule(
    tmp_path: Path,
) -> None:
    by_id, by_fp = Identity.generate(), Identity.generate()

    async def main() -> None:
        cfg = config(tmp_path, admin_peers=[by_id.peer_id, by_fp.fingerprint])
        async with CoordinatorServer(cfg) as server:
            a = await client(server, "alpha")
            o1 = await client(server, "ops-1", by_id)
            o2 = await client(server, "ops-2", by_fp)
            regs = [a.registration, o1.registration, o2.registration]
            assert [r.is_admin for r in regs if r] == [False, True, True]
            for c in (a, o1, o2):
                await c.aclose()

    run(main())


def test_same_key_keeps_ip_and_name_conflicts(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            ident = Identity.generate()
            a1 = await client(server, "alpha", ident)
            a2 = await client(server, "alpha", ident)
            assert a1.registration and a2.registration
            assert a2.registration.mesh_ip == a1.registration.mesh_ip
            assert not a2.registration.renamed
            other = await client(server, "alpha")
            assert other.registration and other.registration.name == "alpha-2"
            assert other.registration.mesh_ip != a1.registration.mesh_ip
            strict = ControlClient(
                server=server.url,
                identity=Identity.generate(),
                ca_pem=a1.ca_pem,
                auth_token=TOKEN,
                name="alpha",
                rename=False,
            )
            with pytest.raises(ApiRequestError) as err:
                await strict.register()
            assert err.value.status == 409 and err.value.error == "name_taken"
            for c in (a1, a2, other, strict):
                await c.aclose()

    run(main())


def test_bad_registrations_get_clear_4xx(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path, auth_failures_burst=1000)
        async with CoordinatorServer(cfg) as server:
            api = Api(server)
            ident = Identity.generate()
            cases: list[tuple[int, str, Any]] = []
            body = await api.signed(ident, "alpha")
            cases.append(
                (
                    401,
                    "bad_token",
                    await api.call(
                        "POST", "/api/v1/register", body, token="wrong-token-wrong-token"
                    ),
                )
            )
            cases.append((401, "token_required", await api.call("POST", "/api/v1/register", body)))
            body = await api.signed(ident, "alpha", signer=Identity.generate())
            cases.append(
                (
                    401,
                    "bad_signature",
                    await api.call("POST", "/api/v1/register", body, token=TOKEN),
                )
            )
            body = await api.signed(ident, "alpha", sign_token="not-the-mesh-token")
            cases.append(
                (
                    401,
                    "bad_signature",
                    await api.call("POST", "/api/v1/register", body, token=TOKEN),
                )
            )
            body = await api.signed(ident, "alpha")
            await api.call("POST", "/api/v1/register", body, token=TOKEN)
            cases.append(
                (
                    401,
                    "bad_challenge",  # replayed nonce
                    await api.call("POST", "/api/v1/register", body, token=TOKEN),
                )
            )
            cases.append(
                (
                    400,
                    "malformed",
                    await api.call("POST", "/api/v1/register", raw=b"{not json", token=TOKEN),
                )
            )
            cases.append(
                (
                    400,
                    "malformed",
                    await api.call("POST", "/api/v1/register", {"name": 5}, token=TOKEN),
                )
            )
            body = await api.signed(ident, "Bad_Name")
            cases.append(
                (400, "bad_name", await api.call("POST", "/api/v1/register", body, token=TOKEN))
            )
            body = await api.signed(Identity.generate(), "this")
            cases.append(
                (403, "bad_name", await api.call("POST", "/api/v1/register", body, token=TOKEN))
            )
            cases.append(
                (
                    413,
                    "too_large",
                    await api.call("POST", "/api/v1/register", raw=b"x" * 70000, token=TOKEN),
                )
            )
            for status, error, (got_status, got_body) in cases:
                assert (got_status, got_body["error"]) == (status, error), got_body
                assert got_body["message"]
            await api.close()

    run(main())


def test_thousand_bad_registrations_change_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path, auth_failures_burst=400, auth_failures_per_minute=0)
        async with CoordinatorServer(cfg) as server:
            first = await client(server, "alpha")
            store = server.coordinator.store
            assert isinstance(store, SqliteStore)
            await server.coordinator.flush()
            before = await store.dump()
            api = Api(server)
            statuses: dict[int, int] = {}
            idents = [Identity.generate() for _ in range(4)]

            async def one(i: int) -> None:
                kind = i % 4
                ident = idents[kind]
                if kind == 0:
                    status, _ = await api.call(
                        "POST",
                        "/api/v1/register",
                        await api.signed(ident, f"x{i}"),
                        token="nope" * 5,
                    )
                elif kind == 1:
                    body = await api.signed(ident, f"x{i}", signer=idents[0])
                    status, _ = await api.call("POST", "/api/v1/register", body, token=TOKEN)
                elif kind == 2:
                    status, _ = await api.call(
                        "POST", "/api/v1/register", raw=b'{"name": [1,2]}', token=TOKEN
                    )
                else:  # tries to take over alpha's name with a forged signature
                    body = await api.signed(first.identity, "alpha", signer=ident)
                    status, _ = await api.call("POST", "/api/v1/register", body, token=TOKEN)
                statuses[status] = statuses.get(status, 0) + 1

            for start in range(0, 1000, 50):
                await asyncio.gather(*(one(i) for i in range(start, start + 50)))
            await server.coordinator.flush()
            after = await store.dump()
            assert before == after
            assert sum(statuses.values()) == 1000
            assert set(statuses) <= {400, 401, 429}
            assert statuses.get(429, 0) > 0  # the per-source allowance ran out
            assert server.coordinator.stats["registrations"] == 1
            await api.close()
            await first.aclose()

    run(main())


def test_rate_limit_gives_429_with_retry_after(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path, auth_failures_burst=2, auth_failures_per_minute=1)
        async with CoordinatorServer(cfg) as server:
            api = Api(server)
            for _ in range(2):
                status, _ = await api.call("GET", "/api/v1/peers", token="bad-session")
                assert status == 401
            status, body = await api.call("POST", "/api/v1/register/challenge")
            assert status == 429 and body["error"] == "rate_limited"
            await api.close()

    run(main())


def test_session_required(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            api = Api(server)
            assert (await api.call("POST", "/api/v1/heartbeat", {}))[0] == 401
            assert (await api.call("GET", "/api/v1/peers"))[0] == 401
            # The mesh join token is no credential for anything but a new key's registration.
            assert (await api.call("GET", "/api/v1/peers", token=TOKEN))[0] == 403
            assert (await api.call("GET", "/api/v1/dns", token=TOKEN))[0] == 403
            assert (await api.call("POST", "/api/v1/heartbeat", {}, token=TOKEN))[0] == 403
            assert (await api.call("GET", "/health"))[0] == 200
            assert (await api.call("GET", "/no/such/path"))[0] == 404
            await api.close()

    run(main())


# --- durability -------------------------------------------------------------------------------


def test_restart_keeps_names_and_ips(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path)
        ident = Identity.generate()
        async with CoordinatorServer(cfg) as server:
            a = await client(server, "alpha", ident)
            b = await client(server, "beta")
            await b.heartbeat()
            ca1 = server.coordinator.ca.cert_pem if server.coordinator.ca else ""
            before = {p.name: p.mesh_ip for p in (await a.list_peers()).peers}
            session_b = b.session_token
            await a.aclose()
            await b.aclose()
        async with CoordinatorServer(cfg) as server:
            assert server.coordinator.ca and server.coordinator.ca.cert_pem == ca1
            b2 = ControlClient(
                server=server.url, identity=Identity.generate(), ca_pem=ca1, session_token=session_b
            )
            after = {p.name: p.mesh_ip for p in (await b2.list_peers()).peers}
            assert after == before
            a2 = await client(server, "alpha", ident)
            assert a2.registration and a2.registration.mesh_ip == before["alpha"]
            await a2.aclose()
            await b2.aclose()

    run(main())


def test_delete_frees_the_ip_and_keeps_the_name_for_its_key(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            admin = await client(server, "admin-node")
            ident = Identity.generate()
            a = await client(server, "alpha", ident)
            b = await client(server, "beta")
            assert a.registration
            with pytest.raises(ApiRequestError) as err:  # beta is not admin
                await b._call("DELETE", "/api/v1/peers/alpha", None)
            assert err.value.status == 403
            ip = a.registration.mesh_ip
            await a.leave()
            assert not server.coordinator.alloc.is_used(ip)
            other = await client(server, "alpha")  # another key: the name stays alpha's
            assert other.registration and other.registration.name == "alpha-2"
            again = await client(server, "alpha", ident)  # the same key gets it back
            assert again.registration and again.registration.name == "alpha"
            await admin._call("DELETE", "/api/v1/peers/beta", None)
            names = {p.name for p in (await admin.list_peers()).peers}
            assert names == {"admin-node", "alpha", "alpha-2"}
            for c in (admin, a, b, other, again):
                await c.aclose()

    run(main())


# --- push channel, liveness, rendezvous ---------------------------------------------------------


def test_push_channel_delivers_changes_quickly(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path, heartbeat_interval=0.3)) as server:
            a = await client(server, "alpha")
            seen: list[Any] = []
            a.add_callback(seen.append)
            task = asyncio.create_task(a.run())
            await until(lambda: server.coordinator.hub.is_connected(a.identity.peer_id))
            t0 = time.monotonic()
            b = await client(server, "beta")
            await until(lambda: any(isinstance(c, PeerAdded) for c in seen), timeout=1.0)
            assert time.monotonic() - t0 < 1.0
            added = next(c for c in seen if isinstance(c, PeerAdded))
            assert added.peer.name == "beta" and added.peer.online
            # beta never heartbeats: offline after 3 missed intervals (0.9 s)
            await until(
                lambda: any(isinstance(c, PeerChanged) and not c.peer.online for c in seen),
                timeout=3.0,
            )
            assert b.registration is not None
            await b.leave()
            await until(lambda: any(isinstance(c, PeerRemoved) for c in seen), timeout=1.0)
            assert a.table.by_name("beta") is None
            assert server.coordinator.liveness.is_online(a.identity.peer_id)  # a heartbeats
            await a.aclose()
            await task
            await b.aclose()

    run(main())


def test_endpoint_change_and_rendezvous(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            endpoints = ["192.0.2.10:2223"]
            a = await client(server, "alpha", endpoints=lambda: list(endpoints))
            b = await client(server, "beta")
            seen: list[Any] = []
            b.add_callback(seen.append)
            task = asyncio.create_task(b.run())
            await until(lambda: server.coordinator.hub.is_connected(b.identity.peer_id))
            endpoints.append("198.51.100.5:40000")
            await a.heartbeat()
            await until(
                lambda: any(
                    isinstance(c, PeerChanged) and "198.51.100.5:40000" in c.peer.endpoints
                    for c in seen
                )
            )
            ack = await a.rendezvous("beta")
            assert ack.delivered
            await until(lambda: any(isinstance(c, RendezvousRequested) for c in seen))
            rv = next(c for c in seen if isinstance(c, RendezvousRequested))
            assert rv.from_peer == "alpha" and "198.51.100.5:40000" in rv.endpoints
            with pytest.raises(ApiRequestError) as err:
                await a.rendezvous("nobody")
            assert err.value.status == 404
            await b.aclose()
            await task
            await a.aclose()

    run(main())


def test_peer_keeps_table_while_coordinator_is_down(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path, heartbeat_interval=0.5)
        server = CoordinatorServer(cfg)
        await server.start()
        cfg = msgspec.structs.replace(cfg, listen=f"127.0.0.1:{server.api_port}")
        a = await client(server, "alpha", peers_cache=tmp_path / "peers.json")
        b = await client(server, "beta")
        task = asyncio.create_task(a.run())
        await until(lambda: a.table.by_name("beta") is not None)
        await server.stop()
        await until(lambda: not a.reachable, timeout=5.0)
        assert a.table.by_name("beta") is not None  # nothing forgotten
        cached = json.loads((tmp_path / "peers.json").read_text())
        assert [p["name"] for p in cached] == ["beta"]
        server = CoordinatorServer(cfg)  # same port, same state
        await server.start()
        c = await client(server, "gamma")
        await until(lambda: a.table.by_name("gamma") is not None, timeout=10.0)
        await a.aclose()
        await task
        for x in (b, c):
            await x.aclose()
        await server.stop()

    run(main())


# --- server-as-client ---------------------------------------------------------------------------


def test_join_mesh_makes_the_coordinator_a_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "home"))

    async def main() -> None:
        jm = JoinMesh(name="hub", private_key=str(tmp_path / "coord_key"))
        async with CoordinatorServer(config(tmp_path, join_mesh=jm)) as server:
            await until(lambda: server.coordinator.peer_by_name("hub") is not None)
            hub = server.coordinator.peer_by_name("hub")
            assert hub is not None and hub.is_coordinator
            p = await client(server, "alpha")
            records = {r.name: r.ip for r in (await p.dns()).records}
            assert records["this.tunnelmesh"] == hub.mesh_ip == records["this.tm"]
            assert records["hub.tunnelmesh"] == hub.mesh_ip
            # the coordinator's own peer has a context, so `tunnelmesh peers` works there too
            await until(lambda: (tmp_path / "home" / "contexts.json").exists())
            ctx = ContextStore(tmp_path / "home").get("hub")
            assert ctx.mesh_ip == hub.mesh_ip
            await p.aclose()

    run(main())


def test_join_mesh_default_key_follows_tunnelmesh_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``join_mesh.private_key`` left at its default is ``$TUNNELMESH_HOME/id_ed25519``, as for
    ``join`` (it was ``$HOME/.tunnelmesh/id_ed25519`` while the context went to
    ``$TUNNELMESH_HOME``)."""
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))

    async def main() -> None:
        async with CoordinatorServer(config(tmp_path, join_mesh=JoinMesh(name="hub"))) as server:
            await until(lambda: (tmp_path / "home" / "contexts.json").exists())
            ctx = ContextStore(tmp_path / "home").get("hub")
            assert ctx.key_path == str(tmp_path / "home" / "id_ed25519")
            assert server.coordinator.peer_by_name("hub") is not None

    run(main())
    assert (tmp_path / "home" / "id_ed25519").exists()
    assert not (tmp_path / "user").exists()
    assert (tmp_path / "home" / "contexts").stat().st_mode & 0o777 == 0o700


def test_join_makes_the_contexts_directory_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``contexts/`` (made as a parent of ``contexts/<name>``) is 0700 whatever the umask; it
    was 0755, while docs/security.md promises directories 0700."""
    from tunnelmesh.control import daemon

    home = tmp_path / "home"
    home.mkdir(mode=0o700)

    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            await daemon.join(
                server=server.url,
                token=TOKEN,
                context_name="m",
                name="n",
                key_path=home / "id_ed25519",
                store=ContextStore(home),
            )

    run(main())
    for d in (home / "contexts", home / "contexts" / "m"):
        assert d.stat().st_mode & 0o777 == 0o700, d


def test_a_join_waiting_for_approval_outlasts_the_registration_pace(tmp_path: Path) -> None:
    """A waiting join polls faster than a key may register (10, then one per 10 s): a 429
    makes it wait longer, not give up (it stopped with "429 rate_limited" after ~40 s)."""
    from tunnelmesh.control import daemon

    home = tmp_path / "home"
    home.mkdir(mode=0o700)

    async def main() -> None:
        async with CoordinatorServer(config(tmp_path, approve_new_peers=True)) as server:
            coord = server.coordinator
            first = await client(server, "boss")  # the first key is admin and never waits
            waiting = asyncio.ensure_future(
                daemon.join(
                    server=server.url,
                    token=TOKEN,
                    context_name="m",
                    name="newbie",
                    key_path=home / "id_ed25519",
                    store=ContextStore(home),
                    on_pending=lambda reg: True,
                    approval_poll=0.01,
                    limited_backoff=0.05,
                )
            )
            await until(lambda: coord.stats["registrations_limited"] >= 2 or waiting.done())
            assert not waiting.done(), waiting.exception()
            rec = coord.peer_by_name("newbie")
            assert rec is not None and rec.pending
            assert await coord.approve(rec)
            result = await asyncio.wait_for(waiting, 10)
            assert result.context.peer_name == "newbie"
            await first.aclose()

    run(main())


def test_the_coordinators_own_peer_never_waits_for_approval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``approve_new_peers`` and ``admin_peers`` naming someone else, the ``join_mesh``
    peer (a key the operator configured in server.yaml) is admitted at once; it waited as
    pending, so the coordinator's own node never came up until an admin approved it."""
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "home"))

    async def main() -> None:
        cfg = config(
            tmp_path,
            join_mesh=JoinMesh(name="hub", private_key=str(tmp_path / "coord_key")),
            approve_new_peers=True,
            admin_peers=[Identity.generate().peer_id],
        )
        async with CoordinatorServer(cfg) as server:
            await until(lambda: server.coordinator.peer_by_name("hub") is not None)
            hub = server.coordinator.peer_by_name("hub")
            assert hub is not None and hub.is_coordinator and not hub.is_admin
            assert not hub.pending
            p = await client(server, "alpha")  # an ordinary new key still waits
            rec = server.coordinator.peer_by_name("alpha")
            assert rec is not None and rec.pending
            await p.aclose()

    run(main())


def test_join_mesh_keeps_the_key_it_had_in_home_before_tunnelmesh_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An install from before d5a61b7 has its join_mesh key in ``$HOME/.tunnelmesh``: with
    ``TUNNELMESH_HOME`` elsewhere and no key there, the coordinator keeps that key (same peer ID,
    same name, not ``hub-2``) and says once where it is and how to move it; no new key is made.
    Such an install is known by its context in ``$TUNNELMESH_HOME`` naming the old key."""
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    old_key = tmp_path / "user" / ".tunnelmesh" / "id_ed25519"
    old = Identity.generate()
    old.save(old_key)
    (tmp_path / "home").mkdir(mode=0o700)
    ContextStore(tmp_path / "home").put(
        Context(name="hub", server="https://127.0.0.1:1", key_path=str(old_key)), activate=False
    )

    async def main() -> None:
        async with CoordinatorServer(config(tmp_path, join_mesh=JoinMesh(name="hub"))) as server:
            await until(lambda: ContextStore(tmp_path / "home").get("hub").peer_id != "")
            ctx = ContextStore(tmp_path / "home").get("hub")
            assert ctx.key_path == str(old_key)
            assert ctx.peer_id == old.peer_id
            peer = server.coordinator.peer_by_name("hub")
            assert peer is not None

    with caplog.at_level("WARNING"):
        run(main())
    assert not (tmp_path / "home" / "id_ed25519").exists()
    moves = [r.getMessage() for r in caplog.records if f"mv {old_key}" in r.getMessage()]
    assert len(moves) == 1, caplog.text
    assert str(tmp_path / "home") in moves[0]


def test_join_mesh_takes_no_key_from_home_that_no_context_here_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key in ``$HOME/.tunnelmesh`` that no context in ``$TUNNELMESH_HOME`` names (another
    node's, say a ``join`` without ``TUNNELMESH_HOME``) is not the coordinator's: it gets its own
    key in ``$TUNNELMESH_HOME``."""
    monkeypatch.setenv("TUNNELMESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    other = Identity.generate()
    other.save(tmp_path / "user" / ".tunnelmesh" / "id_ed25519")

    async def main() -> None:
        async with CoordinatorServer(config(tmp_path, join_mesh=JoinMesh(name="hub"))):
            await until(lambda: (tmp_path / "home" / "contexts.json").exists())
            ctx = ContextStore(tmp_path / "home").get("hub")
            assert ctx.key_path == str(tmp_path / "home" / "id_ed25519")
            assert ctx.peer_id != other.peer_id

    run(main())


def test_heartbeats_back_off_while_no_coordinator_answers() -> None:
    """2, 4, 8 ... s between tries, never longer than the heartbeat interval (it was 2 s
    forever: ten thousand peers knocking every 2 s at a coordinator that is down)."""
    from tunnelmesh.control.client import unreachable_wait

    assert [unreachable_wait(n, 30.0) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert unreachable_wait(1, 0.5) == 0.5  # a short interval stays the bound
    assert unreachable_wait(10_000, 3600.0) == 2048.0  # bounded exponent
