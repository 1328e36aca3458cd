"""Transport controls at run time: the coordinator stores a peer's transport order, pushes it to
that node, and the node's path selection takes it without a restart (loopback, in-memory
transports). The lab test with real nodes is ``tests/test_e2e_admin_lab.py`` (the dashboard
forces a peer onto the relay) and ``tests/test_transport_control_lab.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_coord_api import TOKEN, Api, client, config, run, until
from test_node_sync import FakeTransport, Harness, info
from tunnelmesh.control.messages import TransportOrder
from tunnelmesh.control.peertable import PeerAdded, PeerTable, TransportOrderChanged
from tunnelmesh.coordinator.server import CoordinatorServer
from tunnelmesh.identity import Identity
from tunnelmesh.node.transportctl import TransportControl


def _orders(seen: list[Any]) -> list[tuple[str, ...]]:
    return [c.order for c in seen if isinstance(c, TransportOrderChanged)]


def test_admin_or_the_peer_itself_sets_the_order_and_the_node_gets_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            api = Api(server)
            boss = await client(server, "boss")
            beta = await client(server, "beta")
            gamma = await client(server, "gamma")
            admin_tok = boss.registration.session_token
            beta_tok = beta.registration.session_token
            gamma_tok = gamma.registration.session_token
            seen: list[Any] = []
            beta.add_callback(seen.append)
            task = asyncio.create_task(beta.run())
            await until(lambda: beta.table.revision >= 0)
            assert _orders(seen) == []  # an empty order after the snapshot: nothing changes
            path = "/api/v1/peers/beta/transport"
            # every member may look; another member may not change it; nor a stranger
            st, got = await api.call("GET", path, token=gamma_tok)
            assert st == 200 and got["order"] == [] and got["connected"] is True
            assert (await api.call("PUT", path, {"force": "relay"}, token=gamma_tok))[0] == 403
            assert (await api.call("PUT", path, {"force": "relay"}, token=TOKEN))[0] == 403
            assert (await api.call("PUT", path, {"force": "relay"}))[0] == 401
            assert (await api.call("DELETE", path, token=gamma_tok))[0] == 403
            assert server.coordinator.transport_orders.get(beta.registration.peer_id) is None
            # an admin forces the relay: pushed to beta at once
            st, got = await api.call("PUT", path, {"force": "relay"}, token=admin_tok)
            assert st == 200 and got["order"] == ["relay"], got
            assert got["set_by"] == boss.registration.peer_id
            await until(lambda: _orders(seen) == [("relay",)])
            # the peer itself sets its own order
            st, got = await api.call("PUT", path, {"order": ["udp", "relay"]}, token=beta_tok)
            assert st == 200 and got["order"] == ["udp", "relay"]
            await until(lambda: _orders(seen)[-1] == ("udp", "relay"))
            # its heartbeat reports the order in force; the API shows it
            beta._status = lambda: _status(["udp", "relay"])
            await beta.heartbeat()
            got = (await api.call("GET", path, token=gamma_tok))[1]
            assert got["effective_order"] == ["udp", "relay"]
            # cleared: the node gets an empty order (its own again)
            st, got = await api.call("DELETE", path, token=beta_tok)
            assert st == 200 and got["order"] == []
            await until(lambda: _orders(seen)[-1] == ())
            assert (await api.call("GET", "/api/v1/peers/nobody/transport", token=beta_tok))[
                0
            ] == 404
            await beta.aclose()
            await task
            for c in (boss, gamma):
                await c.aclose()
            await api.close()

    run(main())


def _status(order: list[str]) -> Any:
    from tunnelmesh.control.client import PeerStatus

    return PeerStatus(transport_order=order, transports={"gamma": order[0]})


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "either"),
        ({"order": ["udp"], "force": "relay"}, "either"),
        ({"order": []}, "non-empty"),
        ({"order": ["udp", "udp"]}, "twice"),
        ({"order": ["UDP"]}, "lowercase"),
        ({"order": ["x" * 40]}, "lowercase"),
        ({"order": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}, "at most 8"),
        ({"force": ""}, "lowercase"),
        ({"force": 3}, "str"),
        ({"order": "udp"}, "array"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_orders_are_400_counted_and_change_nothing(
    tmp_path: Path, body: dict[str, Any], says: str
) -> None:
    async def main() -> None:
        async with CoordinatorServer(config(tmp_path)) as server:
            api = Api(server)
            boss = await client(server, "boss")
            coord = server.coordinator
            before = coord.stats["bad_requests"]
            st, got = await api.call(
                "PUT", "/api/v1/peers/boss/transport", body, token=boss.registration.session_token
            )
            assert st == 400 and says in got["message"], got
            assert coord.stats["bad_requests"] == before + 1
            assert coord.transport_orders.get(boss.registration.peer_id) is None
            assert await coord.store.get_meta("transport_orders") is None
            await boss.aclose()
            await api.close()

    run(main())


def test_the_order_survives_a_restart_and_a_reconnect_learns_a_clear(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path)
        beta_key, boss_key = Identity.generate(), Identity.generate()
        path = "/api/v1/peers/beta/transport"
        async with CoordinatorServer(cfg) as server:
            api = Api(server)
            boss = await client(server, "boss", ident=boss_key)
            beta = await client(server, "beta", ident=beta_key)
            tok = boss.registration.session_token
            assert (await api.call("PUT", path, {"force": "relay"}, token=tok))[0] == 200
            await beta.aclose()
            await boss.aclose()
            await api.close()
        async with CoordinatorServer(cfg) as server:
            beta = await client(server, "beta", ident=beta_key)
            task = asyncio.create_task(beta.run())
            await until(lambda: beta.table.transport_order == ("relay",))  # after the snapshot
            await beta.aclose()
            await task
            # cleared while beta is away: its next push channel says so
            api = Api(server)
            boss = await client(server, "boss", ident=boss_key)
            tok = boss.registration.session_token
            assert (await api.call("DELETE", path, token=tok))[1]["order"] == []
            beta = await client(server, "beta", ident=beta_key)
            beta.table.transport_order = ("relay",)  # what the node last applied
            seen: list[Any] = []
            beta.add_callback(seen.append)
            task = asyncio.create_task(beta.run())
            await until(lambda: _orders(seen) == [()])
            await beta.aclose()
            await task
            await boss.aclose()
            await api.close()

    run(main())


def test_a_cleared_order_reaches_a_node_that_was_away() -> None:
    table = PeerTable("me")
    assert table.apply(TransportOrder(order=["relay"])) == [TransportOrderChanged(("relay",))]
    assert table.apply(TransportOrder(order=["relay"])) == []  # the same again: no event
    assert table.apply(TransportOrder(order=[])) == [TransportOrderChanged(())]


# --- the node side: TransportControl over PeerSync ----------------------------------------------


class Named(FakeTransport):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class FakeClient:
    def __init__(self) -> None:
        self.table = PeerTable("me")
        self.callbacks: list[Any] = []
        self.heartbeats = 0

    def add_callback(self, cb: Any) -> None:
        self.callbacks.append(cb)

    def push(self, order: list[str]) -> None:
        for ch in self.table.apply(TransportOrder(order=order)):
            for cb in self.callbacks:
                cb(ch)

    def heartbeat_now(self) -> None:
        self.heartbeats += 1


def test_the_node_applies_the_pushed_order_at_run_time_and_reports_soon() -> None:
    async def main() -> None:
        h = Harness()
        h.sync.transports = [Named("udp"), Named("ssh"), Named("relay")]
        h.sync.transport_order = ["udp", "ssh", "relay"]
        peer = Identity.generate()
        h.sync.apply(PeerAdded(info("beta", "10.99.0.2", ["192.0.2.1:51820"], peer)))
        paths = h.sync.paths["beta"]
        assert paths.selector.order == ["udp", "ssh", "relay"]
        fake = FakeClient()
        ctl = TransportControl(h.sync, fake, h.lines.append)
        ctl.start()
        fake.push(["relay"])  # forced onto the relay: the live peer's paths re-select
        assert h.sync.transport_order == ["relay"] and paths.selector.order == ["relay"]
        assert ctl.applied == ("relay",)
        assert "transport order: relay (set through the coordinator)" in h.lines
        fake.push(["quic", "udp"])  # a transport this node does not run is left out
        assert paths.selector.order == ["udp"]
        fake.push(["quic"])  # none runs here: refused, the order stays
        assert paths.selector.order == ["udp"] and "refused" in h.lines[-1]
        fake.push([])  # cleared: the node's own order again
        assert paths.selector.order == ["udp", "ssh", "relay"] and ctl.applied == ()
        # one early heartbeat per burst of changes, after REPORT_DELAY
        await asyncio.sleep(1.2)
        assert fake.heartbeats == 1
        h.sync.path_changed("beta", "relay", "forced")
        h.sync.path_changed("beta", "udp", "back")
        await asyncio.sleep(0.1)
        assert fake.heartbeats == 1  # spaced: at most one every REPORT_SPACING
        ctl.close()
        await h.sync.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_node_started_with_an_order_already_pushed_applies_it() -> None:
    async def main() -> None:
        h = Harness()
        h.sync.transports = [Named("udp"), Named("relay")]
        h.sync.transport_order = ["udp", "relay"]
        fake = FakeClient()
        fake.table.apply(TransportOrder(order=["relay"]))
        TransportControl(h.sync, fake, h.lines.append).start()
        assert h.sync.transport_order == ["relay"]
        await h.sync.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))
