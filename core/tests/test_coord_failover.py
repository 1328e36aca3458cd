"""Peers learn every coordinator of the mesh and move to another when theirs is gone.

Two coordinators over loopback on one state store (the second one started after the peers
joined, so it loaded them), each with its own ``public_url``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import msgspec
import pytest
from test_coord_api import TOKEN, Api, client, config, run, until
from tunnelmesh.config import ServerConfig
from tunnelmesh.control.client import ApiRequestError, ControlClient
from tunnelmesh.control.messages import Coordinators, decode_push, encode
from tunnelmesh.coordinator.ca import COORDINATOR_NAME
from tunnelmesh.coordinator.roster import decode_roster, encode_roster, refreshed
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.errors import StateStoreError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two(tmp_path: Path, interval: float = 0.5) -> tuple[ServerConfig, ServerConfig]:
    out = []
    for _ in range(2):
        port = _free_port()
        cfg = config(tmp_path, heartbeat_interval=interval, public_url=f"https://127.0.0.1:{port}")
        out.append(msgspec.structs.replace(cfg, listen=f"127.0.0.1:{port}"))
    return out[0], out[1]


def test_a_peer_moves_to_another_coordinator_keeping_name_ip_and_session(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        cfg_a, cfg_b = _two(tmp_path)
        a = CoordinatorServer(cfg_a)
        await a.start()
        alpha = await client(a, "alpha", peers_cache=tmp_path / "alpha" / "peers.json")
        beta = await client(a, "beta")
        b = CoordinatorServer(cfg_b)
        await b.start()
        await a.coordinator.refresh_roster()  # A reads that B is there (else: next interval)
        assert a.coordinator.coordinator_urls() == sorted([cfg_a.public_url, cfg_b.public_url])
        task = asyncio.create_task(alpha.run())
        await until(lambda: len(alpha.coordinators) == 2 and alpha.table.by_name("beta"))
        assert alpha.server == cfg_a.public_url
        cached = json.loads((tmp_path / "alpha" / "coordinators.json").read_text())
        assert set(cached) == {cfg_a.public_url, cfg_b.public_url}
        session, ip = alpha.session_token, alpha.registration and alpha.registration.mesh_ip
        t0 = time.monotonic()
        await a.stop()
        await until(lambda: b.coordinator.hub.is_connected(alpha.identity.peer_id), timeout=15.0)
        took = time.monotonic() - t0
        state = f"server={alpha.server} failovers={alpha.failovers} took={took:.1f}s"
        assert alpha.server == cfg_b.public_url, state
        assert alpha.session_token == session, state  # no new registration: the same session
        rec = b.coordinator.peer_by_name("alpha")
        assert rec is not None and rec.mesh_ip == ip
        assert alpha.table.by_name("beta") is not None  # nothing forgotten meanwhile
        await until(lambda: b.coordinator.liveness.is_online(alpha.identity.peer_id), 10.0)
        print(f"moved to the other coordinator in {took:.2f} s")
        await alpha.aclose()
        await task
        await beta.aclose()
        await b.stop()

    run(main())


def test_a_restarted_peer_knows_the_coordinators_from_its_cache(tmp_path: Path) -> None:
    async def main() -> None:
        cfg_a, cfg_b = _two(tmp_path)
        (tmp_path / "alpha").mkdir()
        (tmp_path / "alpha" / "coordinators.json").write_text(
            json.dumps([cfg_a.public_url, cfg_b.public_url])
        )
        b = CoordinatorServer(cfg_b)  # A never runs: the URL joined with does not answer
        await b.start()
        first = await client(b, "alpha")
        assert first.registration is not None
        again = ControlClient(
            server=cfg_a.public_url,
            identity=first.identity,
            ca_pem=first.ca_pem,
            session_token=first.session_token,
            peers_cache=tmp_path / "alpha" / "peers.json",
        )
        assert again.coordinators == [cfg_a.public_url, cfg_b.public_url]
        task = asyncio.create_task(again.run())
        await until(lambda: b.coordinator.hub.is_connected(first.identity.peer_id), 15.0)
        assert again.server == cfg_b.public_url
        await again.aclose()
        await task
        await first.aclose()
        await b.stop()

    run(main())


def test_the_roster_drops_a_silent_coordinator_and_keeps_the_rest() -> None:
    roster = refreshed({}, "https://a:1", 100.0, 10.0)
    roster = refreshed(roster, "https://b:1", 101.0, 10.0)
    assert sorted(roster) == ["https://a:1", "https://b:1"]
    # b keeps writing; a stopped at 100: gone after 3.5 intervals, not before.
    assert sorted(refreshed(roster, "https://b:1", 134.0, 10.0)) == ["https://a:1", "https://b:1"]
    assert sorted(refreshed(roster, "https://b:1", 136.0, 10.0)) == ["https://b:1"]
    assert decode_roster(encode_roster(roster)) == roster
    assert decode_roster(b"not json") == {} and decode_roster(None) == {}


def test_coordinators_message_and_an_unknown_push_type() -> None:
    msg = decode_push(encode(Coordinators(urls=["https://a:1"])))
    assert isinstance(msg, Coordinators) and msg.urls == ["https://a:1"]
    c = ControlClient(server="https://a:1", identity=_ident(), ca_pem="")
    c._handle_frame(
        '{"type":"something_newer","x":1}\n{"type":"coordinators","urls":["https://b:2/"]}'
    )
    assert c.coordinators == ["https://a:1", "https://b:2"]
    c.learn_coordinators([])  # an older coordinator says nothing: nothing forgotten
    assert c.coordinators == ["https://a:1", "https://b:2"]
    c.learn_coordinators(["http://plain:1", "ftp://x"])  # only https URLs are taken
    assert c.coordinators == ["https://a:1", "https://b:2"]


def test_public_url_must_be_an_https_url(tmp_path: Path) -> None:
    for bad in ("http://a:1", "https://", "https://a:1/path", "a:1", "https://a:99999"):
        with pytest.raises(ValueError, match="public_url"):
            config(tmp_path, public_url=bad)
    assert config(tmp_path, public_url="https://coord.example.org:8443").public_url


def _ident():  # type: ignore[no-untyped-def]
    from tunnelmesh.identity import Identity

    return Identity.generate()


def test_with_the_store_down_reads_answer_and_writes_get_503_with_retry_after(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            coord = server.coordinator
            alpha = await client(server, "alpha")  # the first peer: admin
            await coord.store.close()  # the database is gone
            peers = await alpha.list_peers()  # reads: from memory
            assert [p.name for p in peers.peers] == ["alpha"]
            assert await alpha.heartbeat()  # heartbeats: memory, flushed later
            api = Api(server)
            for method, path, body in (
                ("POST", "/api/v1/groups", {"name": "ops"}),
                ("POST", "/api/v1/token/rotate", {}),
                ("POST", "/api/v1/filter/rules", {"port": 5432, "action": "deny"}),
                ("PUT", "/api/v1/peers/alpha/transport", {"order": ["udp"]}),
            ):
                status, answer, headers = await _call(api, alpha, method, path, body)
                assert status == 503 and answer["error"] == "store_unavailable", answer
                assert headers.get("Retry-After") == "5"
                assert "state store" not in answer["message"]  # the store's words are logged
            beta = ControlClient(
                server=server.url,
                identity=_ident(),
                ca_pem=alpha.ca_pem,
                auth_token=TOKEN,
                name="beta",
            )
            with pytest.raises(ApiRequestError) as err:
                await beta.register()  # a registration is a write
            await beta.aclose()
            assert err.value.status == 503
            assert coord.peer_by_name("beta") is None and not coord.groups.exists("ops")
            await api.close()
            await alpha.aclose()
            await coord.store.open()  # back: writes work again
            g = await _call(api2 := Api(server), alpha, "POST", "/api/v1/groups", {"name": "ops"})
            assert g[0] in (200, 201), g
            await api2.close()

    run(main())


async def _call(
    api: Api, peer: ControlClient, method: str, path: str, body: object
) -> tuple[int, dict[str, str], dict[str, str]]:
    headers = {"Authorization": f"Bearer {peer.session_token}"}
    async with api.http.request(
        method,
        api.url + path,
        json=body,
        headers=headers,
        server_hostname=COORDINATOR_NAME,
    ) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


@pytest.mark.parametrize("interval", [0.5, 1.0, 2.0, 10.0, 60.0])
def test_another_coordinators_peer_is_seen_before_it_could_time_out(
    tmp_path: Path, interval: float
) -> None:
    """A peer attached to another coordinator is seen here through the store: its heartbeat
    (up to 1.1 intervals apart, the client's jitter), that coordinator's flush, this one's
    poll, a tick (0.25 s) each. That lag must stay under the three intervals that make a peer
    offline, else every coordinator but its own shows it flapping (a 1 s interval with the
    old fixed 2 s flush and 1 s poll: 4.6 s > 3 s)."""
    from tunnelmesh.coordinator.core import Coordinator

    coord = Coordinator(config(tmp_path, heartbeat_interval=interval))
    worst = 1.1 * interval + coord.flush_interval + coord.liveness_poll + 2 * 0.25
    assert worst < coord.liveness.timeout, (worst, coord.flush_interval, coord.liveness_poll)
    assert coord.flush_interval <= 2.0 and coord.liveness_poll <= 1.0  # big meshes: as before


def test_while_the_store_cannot_be_read_no_peer_goes_offline_then_the_rule_resumes(
    tmp_path: Path,
) -> None:
    """B learns of alpha's heartbeats (sent to A) only through the store. While B cannot read
    it, alpha stays online at B (calling it offline would push half the mesh to every peer
    as offline, and back when the database answers); once B reads again, alpha, which stopped
    meanwhile, goes offline there (after the grace the others have to write again)."""

    async def main() -> None:
        cfg_a, cfg_b = _two(tmp_path, interval=0.5)  # offline after 1.5 s without heartbeat
        async with CoordinatorServer(cfg_a) as a:
            alpha = await client(a, "alpha")
            task = asyncio.create_task(alpha.run())
            pid = alpha.identity.peer_id
            b = CoordinatorServer(cfg_b)  # (SQLite has no change feed: B loads alpha at start)
            await b.start()
            await a.coordinator.refresh_roster()
            await until(lambda: b.coordinator.liveness.is_online(pid), 10.0)

            await b.coordinator.store.close()  # B's database does not answer; A's does
            end = time.monotonic() + 3.0  # twice the offline timeout
            while time.monotonic() < end:
                assert b.coordinator.liveness.is_online(pid)
                await asyncio.sleep(0.05)
            await alpha.aclose()
            await task
            await b.coordinator.store.open()
            await until(lambda: not b.coordinator.liveness.is_online(pid), 15.0)
            await b.stop()

    run(main())


def test_a_reload_after_an_outage_does_not_flap_the_others_peers_offline(
    tmp_path: Path,
) -> None:
    """The database comes back: B reloads and reads alpha's time as A last stored it, before
    the outage (A's fresher heartbeats wait for its next flush). That time is expired, but
    alpha is alive: B must not call it offline (and push that to its peers) on a stale read;
    only its liveness ticker may, after the grace the others have to write again. (CI saw
    C list alpha offline right after PostgreSQL returned.)"""

    async def main() -> None:
        cfg_a, cfg_b = _two(tmp_path, interval=0.5)  # offline after 1.5 s without heartbeat
        async with CoordinatorServer(cfg_a) as a:
            alpha = await client(a, "alpha")
            task = asyncio.create_task(alpha.run())
            pid = alpha.identity.peer_id
            b = CoordinatorServer(cfg_b)
            await b.start()
            await a.coordinator.refresh_roster()
            await until(lambda: b.coordinator.liveness.is_online(pid), 10.0)
            online: list[bool] = []
            watching = True

            async def watch() -> None:
                while watching:
                    online.append(b.coordinator.liveness.is_online(pid))
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            await b.coordinator.store.close()  # the outage, as B sees it
            known = b.coordinator.liveness.last_seen(pid) or 0.0
            # A stores one heartbeat B has not read; then its heartbeat writes fail too (A
            # still announces itself: a lapsed roster entry would be another story).
            await until(lambda: a.coordinator.peers[pid].last_seen > known, 5.0)
            a.coordinator._dirty.add(pid)
            await a.coordinator.flush()
            store = a.coordinator.store
            put_liveness = store.put_liveness

            async def refused(records: object) -> None:
                raise StateStoreError("the database went away")

            store.put_liveness = refused  # type: ignore[method-assign,assignment]
            await asyncio.sleep(2.0)  # the stored time is expired now (1.5 s)
            await b.coordinator.store.open()
            await b.coordinator.reload_from_store()
            assert (b.coordinator.liveness.last_seen(pid) or 0.0) > known  # read the stale one
            assert b.coordinator.liveness.is_online(pid)
            store.put_liveness = put_liveness  # type: ignore[method-assign]
            # A flushes alpha's fresh heartbeats; B polls them before its grace ends
            await asyncio.sleep(3.0)
            watching = False
            await watcher
            assert all(online), f"alpha offline at B in {online.count(False)} of {len(online)}"
            await alpha.aclose()
            await task
            await b.stop()

    run(main())


def test_a_coordinator_that_stops_answering_is_left_after_the_failover_timeout(
    tmp_path: Path,
) -> None:
    """A coordinator whose host vanished leaves the peer's kept-alive connection open and
    never answers. With another coordinator known, a heartbeat gives up after
    FAILOVER_TIMEOUT (not the 15 s request timeout), so the peer moves on within its
    heartbeat interval plus that."""
    from aiohttp import web
    from tunnelmesh.control.client import FAILOVER_TIMEOUT, CoordinatorUnreachable

    async def main() -> None:
        cfg_a, cfg_b = _two(tmp_path)
        async with CoordinatorServer(cfg_b) as b:
            alpha = await client(b, "alpha")

            async def hang(request: web.Request) -> web.Response:
                await asyncio.sleep(3600)
                raise AssertionError("unreachable")

            app = web.Application()  # TLS with the mesh's certificate; never answers
            app.router.add_route("*", "/{tail:.*}", hang)
            runner = web.AppRunner(app, shutdown_timeout=0.1)
            await runner.setup()
            host, port = cfg_a.listen.rsplit(":", 1)
            await web.TCPSite(runner, host, int(port), ssl_context=b._ssl).start()
            try:
                alpha.learn_coordinators([cfg_a.public_url, cfg_b.public_url])
                alpha.server = cfg_a.public_url
                t0 = time.monotonic()
                with pytest.raises(CoordinatorUnreachable):
                    await alpha.heartbeat()
                took = time.monotonic() - t0
                assert took < FAILOVER_TIMEOUT + 2.0, took  # (the request timeout is 15 s)
                assert alpha.move_to_next_coordinator() and alpha.server == cfg_b.public_url
                assert await alpha.heartbeat()
            finally:
                await alpha.aclose()
                await runner.cleanup()

    run(main())
