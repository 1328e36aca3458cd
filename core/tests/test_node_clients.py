"""ClientRoutes: the pushed WireGuard clients as routing-table entries, on a concentrator and on
the other nodes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tunnelmesh.config import PeerConfig
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.control.messages import ClientInfo, ClientStatus, ConcentratorStatus
from tunnelmesh.identity import Identity
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.node import Node
from tunnelmesh.node.clients import ClientRecord, ClientRoutes


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    mesh_ip: str
    concentrator: str
    public_key: str = ""
    preshared_key: str = ""
    active: bool = True
    expires_at: float = 0.0
    exit_peer: str = ""


def test_routes_via_the_concentrator_and_served_here() -> None:
    names = {"c0ffee": "conc", "beef": "other"}
    table = RoutingTable()
    table.set_peer("conc", mesh_ips=["10.42.0.9"])
    table.set_peer("b", mesh_ips=["10.42.0.2"])
    now = [1000.0]
    relay: list[bool] = []
    served: list[list[str]] = []
    routes = ClientRoutes(table, "me", names.get, set_relay=relay.append, clock=lambda: now[0])
    routes.subscribe(lambda s: served.append(sorted(s)))
    phone = Client("p1", "phone", "10.42.0.50", "c0ffee")
    mine = Client("p2", "laptop", "10.42.0.51", "me", expires_at=1010.0)
    lost = Client("p3", "tablet", "10.42.0.52", "unknown")
    squat = Client("p4", "b", "10.42.0.53", "c0ffee")  # a peer's name: never taken over
    off = Client("p5", "watch", "10.42.0.54", "c0ffee", active=False)
    clients: list[ClientRecord] = [phone, mine, lost, squat, off]
    routes.apply(clients)
    assert sorted(table.peers) == ["b", "conc", "laptop", "phone"]
    assert table.peers["phone"].via == "conc" and not table.peers["phone"].client
    assert table.peers["laptop"].client and table.peers["laptop"].via == ""
    assert table.peers["b"].mesh_ips == ("10.42.0.2",)
    assert relay[-1] is True and served == [["laptop"]]
    # the concentrator is renamed: the client follows it
    names["c0ffee"] = "conc-2"
    table.set_peer("conc-2", mesh_ips=["10.42.0.9"])
    routes.refresh()
    assert table.peers["phone"].via == "conc-2"
    # expiry, checked on the clock: the served client goes, its route too
    now[0] = 1010.0
    routes.refresh()
    assert "laptop" not in table.peers and relay[-1] is False and served[-1] == []
    # disabled by a push: gone
    routes.apply([replace(phone, active=False)])
    assert sorted(table.peers) == ["b", "conc", "conc-2"]


def test_a_served_full_tunnel_client_gets_its_exit_by_name() -> None:
    names = {"e1": "exit-a", "c0ffee": "conc"}
    table = RoutingTable()
    routes = ClientRoutes(table, "me", names.get)
    full = Client("p1", "phone", "10.42.0.50", "me", exit_peer="e1")
    own = Client("p2", "tablet", "10.42.0.51", "me", exit_peer="me")  # this node is the exit
    other = Client("p3", "laptop", "10.42.0.52", "c0ffee", exit_peer="e1")  # not served here
    gone = Client("p4", "watch", "10.42.0.53", "me", exit_peer="f00d")  # exit not in the mesh
    routes.apply([full, own, other, gone])
    assert table.peers["phone"].exit == "exit-a"
    assert table.peers["tablet"].exit == ""  # its packets meet this node's exit guard
    assert table.peers["laptop"].exit == "" and table.peers["laptop"].via == "conc"
    assert table.peers["watch"].exit == "?f00d"  # no route has that name: dropped, not leaked
    names["e1"] = "exit-b"  # the exit renamed: followed by its key
    routes.refresh()
    assert table.peers["phone"].exit == "exit-b"
    routes.apply([replace(full, exit_peer="")])
    assert table.peers["phone"].exit == "" and table.peers["phone"].client


def test_the_node_reports_its_concentrator_and_names_clients_as_sources(tmp_path: Path) -> None:
    phone = ClientInfo(
        client_id="c1c1c1c1c1c1c1c1",
        name="phone",
        kind="wireguard",
        public_key="k",
        mesh_ip="10.42.0.50",
        concentrator="me",
    )
    table = SimpleNamespace(peers={}, clients=(phone,))
    ctx = Context(name="t", server="https://127.0.0.1:1", peer_name="a", mesh_ip="10.42.0.1")
    node = Node(
        PeerConfig(name="a"),
        context=ctx,
        store=ContextStore(tmp_path),
        identity=Identity.generate(),
        client=SimpleNamespace(table=table),  # type: ignore[arg-type]
    )
    assert node.status().concentrator is None  # not a concentrator

    class Concentrator:
        endpoint = "vpn.example.org:51820"

        def describe(self) -> dict[str, Any]:
            return {}

        def status(self) -> dict[str, dict[str, Any]]:
            return {
                phone.client_id: {
                    "latest_handshake": 1700000000.5,
                    "rx_bytes": 10,
                    "tx_bytes": 20,
                    "endpoint": "192.0.2.7:4500",
                }
            }

    node.concentrator = Concentrator()
    assert node.status().concentrator == ConcentratorStatus(
        endpoint="vpn.example.org:51820",
        clients={
            phone.client_id: ClientStatus(
                latest_handshake=1700000000.5, rx_bytes=10, tx_bytes=20, endpoint="192.0.2.7:4500"
            )
        },
    )
    # a coordinator filter rule names a source by ID: a client's ID gives the client's name
    assert node._source_name(phone.client_id) == "phone"
    assert node._source_name("ffffffffffffffff") is None
