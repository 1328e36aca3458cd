"""The relay with several coordinators: peers attached to different coordinators meet on one.

Two coordinators with the relay route on one state store (the second started after the peers
registered, so both know them). Peer a talks to the first coordinator, peer b to the second;
both nodes were told the mesh's live coordinators, so their relay transports pick the same one
(``relay_server``) and a relayed link between them carries packets. When that coordinator is
no longer announced, both move to the other and the link carries on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
from tunnelmesh.abc import Link
from tunnelmesh.coordinator import CoordinatorServer
from tunnelmesh.testing.conformance import make_packet
from tunnelmesh_relay.server import RELAY_HUB_KEY, RelayHub
from tunnelmesh_relay.testing import RelayMesh
from tunnelmesh_relay.transport import RelayTransport, relay_server

from tunnelmesh_relay import plugin


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))  # type: ignore[arg-type]


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _hub(server: CoordinatorServer) -> RelayHub:
    assert server._runner is not None
    return server._runner.app[RELAY_HUB_KEY]


def test_relay_server_is_the_first_announced_coordinator() -> None:
    assert relay_server(["https://b:1", "https://a:1"], "https://c:1") == "https://a:1"
    assert relay_server([], "https://c:1") == "https://c:1"


def test_peers_of_two_coordinators_relay_through_the_same_one(tmp_path: Path) -> None:
    async def main() -> None:
        from tunnelmesh.manager import make_plugin_manager

        async with RelayMesh(tmp_path, ["a", "b"]) as mesh:
            first = mesh.server
            assert first is not None
            pm = make_plugin_manager(entry_points=False, builtins=False)
            pm.register(plugin, "relay")
            second = CoordinatorServer(
                msgspec.structs.replace(mesh.config, listen="127.0.0.1:0"),
                pm=pm,
                run_join_mesh=False,
            )
            await second.start()  # the same state: it knows a and b
            ca = tmp_path / "ca.crt"
            ca.write_text(mesh.ca_pem)
            announced = sorted([first.url, second.url])

            def node(name: str, server: str) -> Any:
                return SimpleNamespace(
                    x25519_private_key=mesh.identities[name].x25519_private(),
                    context=SimpleNamespace(server=server, ca_path=str(ca)),
                    client=SimpleNamespace(
                        session_token=mesh.sessions[name], announced=list(announced)
                    ),
                    config=SimpleNamespace(tun=SimpleNamespace(mtu=1420)),
                )

            na, nb = node("a", first.url), node("b", second.url)
            a, b = RelayTransport.from_node(na), RelayTransport.from_node(nb)
            assert a.url == b.url  # one relay for both, whatever coordinator each talks to
            incoming: list[Link] = []
            got: list[bytes] = []
            await a.listen(lambda link: None)
            await b.listen(incoming.append)
            await a.wait_connected(10.0)
            await b.wait_connected(10.0)
            hub = _hub(first if announced[0] == first.url else second)
            await until(lambda: {"a", "b"} <= set(hub.conns))
            b.update_peer("a", public_key=mesh.identities["a"].public_raw)
            link = await a.dial("b", [], public_key=mesh.identities["b"].public_raw)
            link.send_batch([make_packet(0, 20)])
            await until(lambda: bool(incoming))
            incoming[0].set_receiver(lambda _l, pkts: got.extend(pkts))
            link.send_batch([make_packet(1, 20)])
            await until(lambda: make_packet(1, 20) in got)

            # The relay coordinator is no longer announced (it stopped): both move on.
            later = [u for u in announced if u != announced[0]]
            na.client.announced = nb.client.announced = later
            other = _hub(second if hub is _hub(first) else first)
            await until(lambda: {"a", "b"} <= set(other.conns), 15.0)
            assert a.url == b.url == later[0].replace("https://", "wss://") + "/api/v1/relay"
            # (the hub holds a connection a moment before the client counts it)
            await until(lambda: a.stats["connects"] == b.stats["connects"] == 2)
            link.send_batch([make_packet(2, 500)])  # the same session, over the other relay
            await until(lambda: make_packet(2, 500) in got, 15.0)
            await a.aclose()
            await b.aclose()
            await second.stop()

    run(main())
