"""ClientRoutes: the pushed WireGuard clients as routing-table entries, on a concentrator and on
the other nodes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tunnelmesh.mesh.routing import RoutingTable
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
