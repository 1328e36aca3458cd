"""The node's exit service without root: a fake `ip`/`nft` runner, temporary /proc/sys and state
files, a real RoutingTable and peer records."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from tunnelmesh.config import PeerConfig
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.control.messages import PeerInfo
from tunnelmesh.control.peertable import PeerChanged, PeerTable
from tunnelmesh.errors import TunnelmeshError
from tunnelmesh.exit.service import ExitGuard, ExitService, bypass_addresses
from tunnelmesh.mesh.routing import RoutingTable

MESH = "10.42.0.0/16"


def ipv4(src: str, dst: str) -> bytes:
    import ipaddress

    return (
        bytes([0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0])
        + ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
    )


def test_guard_drops_traffic_for_outside_the_mesh_unless_an_exit() -> None:
    stats: defaultdict[str, int] = defaultdict(int)
    guard = ExitGuard(MESH, stats=stats)
    packets = [
        ipv4("10.42.0.2", "10.42.0.1"),
        ipv4("10.42.0.2", "93.184.216.34"),
        b"\x60" * 40,  # IPv6
        b"",
    ]
    assert guard.verdicts(packets, "c", True) == [True, False, False, False]
    assert stats["dropped_not_exit"] == 3
    assert guard.verdicts(packets, "c", False) == [True] * 4  # outbound: not its job
    exit_guard = ExitGuard(MESH, allow=True)
    assert exit_guard.verdicts(packets, "c", True) == [True] * 4


def test_guard_with_a_prefix_that_is_not_whole_bytes() -> None:
    guard = ExitGuard("172.16.0.0/12")
    got = guard.verdicts(
        [ipv4("1.1.1.1", "172.31.255.1"), ipv4("1.1.1.1", "172.32.0.1"), b"\x45"], "p", True
    )
    assert got == [True, False, False]


def test_bypass_addresses() -> None:
    got = bypass_addresses(
        ["192.0.2.7:2223", "10.42.0.9:2223", "127.0.0.1:1", "[2001:db8::1]:2223", "192.0.2.7:9"],
        mesh_cidr=MESH,
        extra=["198.51.100.1", "169.254.0.1", "junk"],
    )
    assert got == ["198.51.100.1", "192.0.2.7"]


class FakeRunner:
    """`ip`/`nft` stand-in: every destination is on eth0 outside the tunnel."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, cmd: Sequence[str], stdin: str | None) -> str:
        self.calls.append(" ".join(cmd) + (f" <<{stdin}" if stdin else ""))
        if cmd[:4] == ["ip", "-j", "route", "get"]:
            return json.dumps([{"dev": "eth0"}])
        return ""

    def routes(self) -> list[str]:
        return [c for c in self.calls if c.startswith("ip route replace")]


def peer(name: str, ip: str, endpoints: list[str], *, exit_ok: bool = False) -> PeerInfo:
    return PeerInfo(
        name=name,
        peer_id=name,
        public_key="",
        wg_public_key="",
        mesh_ip=ip,
        endpoints=endpoints,
        allow_exit_traffic=exit_ok,
    )


class FakeNode:
    def __init__(self, tmp: Path, **cfg: Any) -> None:
        self.config = PeerConfig(name="c", control_socket=str(tmp / "c.sock"), **cfg)
        self.name = "c"
        self.mesh_cidr = MESH
        self.context = Context(name="c", server="https://192.0.2.1:8443")
        self.store = ContextStore(tmp / "home")  # where a pinned exit key is saved
        self.routes = RoutingTable()
        self.forwarder = SimpleNamespace(stats=defaultdict(int), filters=[])
        self.sync = SimpleNamespace(peers={})
        self.callbacks: list[Any] = []
        self.client = SimpleNamespace(table=PeerTable("c"), add_callback=self.callbacks.append)
        self.lines: list[str] = []
        self.notify = self.lines.append

    def upsert(self, info: PeerInfo) -> None:
        """What PeerSync does: record the peer, set its route (mesh IP only), tell callbacks."""
        old = self.sync.peers.get(info.name)
        self.sync.peers[info.name] = info
        self.routes.set_peer(
            info.name, public_key=b"k", mesh_ips=[info.mesh_ip], endpoints=info.endpoints
        )
        for cb in self.callbacks:
            cb(PeerChanged(info, old or info))


async def until(pred: Any, timeout: float = 5.0) -> None:
    """Bounded poll: the service's follower runs its `ip` calls in worker threads."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def service(node: FakeNode, run: FakeRunner, tmp: Path, **kw: Any) -> ExitService:
    sysctl = tmp / "sys" / "net" / "ipv4" / "ip_forward"
    sysctl.parent.mkdir(parents=True, exist_ok=True)
    if not sysctl.exists():
        sysctl.write_text("0\n")
    return ExitService(node, run=run, proc_sys=str(tmp / "sys"), **kw)


def test_client_routes_the_internet_to_an_exit_that_allows_it(tmp_path: Path) -> None:
    async def main() -> None:
        run = FakeRunner()
        node = FakeNode(tmp_path, exit_node="e")
        node.upsert(peer("m", "10.42.0.3", ["192.0.2.3:2223"]))
        svc = service(node, run, tmp_path)
        await svc.start()
        assert node.forwarder.filters == [svc.guard]
        assert run.calls[0] == "ip -4 route flush proto 211"  # crash recovery first
        node.upsert(peer("e", "10.42.0.2", ["192.0.2.2:2223", "10.1.0.5:2223"], exit_ok=False))
        await until(lambda: svc.state == "refused")
        assert svc.state == "refused" and not run.routes()
        assert any("does not allow exit traffic" in line for line in node.lines)
        assert node.routes.lookup(bytes([8, 8, 8, 8])) is None

        node.upsert(peer("e", "10.42.0.2", ["192.0.2.2:2223", "10.1.0.5:2223"], exit_ok=True))
        await until(lambda: svc.state == "routed")
        assert svc.state == "routed"
        routes = run.routes()
        assert routes[-2:] == [
            "ip route replace 0.0.0.0/1 dev tun-mesh0 proto 211",
            "ip route replace 128.0.0.0/1 dev tun-mesh0 proto 211",
        ]
        bypassed = {r.split()[3] for r in routes[:-2]}
        assert bypassed == {"192.0.2.1/32", "192.0.2.2/32", "10.1.0.5/32", "192.0.2.3/32"}
        # internet destinations go to the exit, mesh ones stay direct
        assert node.routes.lookup(bytes([8, 8, 8, 8])).name == "e"  # type: ignore[union-attr]
        assert node.routes.lookup(bytes([10, 42, 0, 3])).name == "m"  # type: ignore[union-attr]
        # PeerSync rewriting the exit's entry (new endpoints) keeps 0.0.0.0/0 and the bypass
        node.upsert(peer("e", "10.42.0.2", ["192.0.2.9:2223"], exit_ok=True))
        await until(lambda: "192.0.2.9" in svc.routes.bypass)
        assert "0.0.0.0/0" in node.routes.peers["e"].mesh_ips
        assert "192.0.2.9" in svc.routes.bypass and "192.0.2.2" not in svc.routes.bypass

        # the exit stops allowing it: routes removed, the entry loses 0.0.0.0/0
        run.calls.clear()
        node.upsert(peer("e", "10.42.0.2", ["192.0.2.9:2223"], exit_ok=False))
        await until(lambda: svc.state == "refused")
        assert run.calls == ["ip -4 route flush proto 211"]
        assert node.routes.peers["e"].mesh_ips == ("10.42.0.2",)
        await svc.aclose()
        assert run.calls[-1] == "ip -4 route flush proto 211"

    asyncio.run(main())


def test_stop_removes_routes_and_the_default_entry(tmp_path: Path) -> None:
    async def main() -> None:
        run = FakeRunner()
        node = FakeNode(tmp_path, exit_node="e")
        svc = service(node, run, tmp_path, coordinator_ips=[])
        await svc.start()
        await asyncio.sleep(0)
        assert svc.state == "off"  # no peer list yet: no warning
        node.client.table.revision = 1  # the coordinator's snapshot arrived
        node.callbacks[-1](None)
        await until(lambda: svc.state == "missing")
        assert svc.state == "missing"
        assert any("not in the mesh" in line for line in node.lines)
        node.upsert(peer("e", "10.42.0.2", ["192.0.2.2:2223"], exit_ok=True))
        await until(lambda: svc.state == "routed")
        assert svc.describe()["state"] == "routed"
        run.calls.clear()
        await svc.aclose()
        assert run.calls == ["ip -4 route flush proto 211"]
        assert node.routes.peers["e"].mesh_ips == ("10.42.0.2",)

    asyncio.run(main())


def test_exit_sets_up_forwarding_and_undoes_it_and_recovers(tmp_path: Path) -> None:
    async def main() -> None:
        run = FakeRunner()
        node = FakeNode(tmp_path, allow_exit_traffic=True)
        svc = service(node, run, tmp_path)
        sysctl = tmp_path / "sys" / "net" / "ipv4" / "ip_forward"
        await svc.start()
        assert sysctl.read_text() == "1\n"
        assert any("masquerade" in c for c in run.calls)
        assert svc.guard.allow and svc.state == "off"
        state = tmp_path / "c.sock.state" / "exit-gateway.json"
        assert json.loads(state.read_text()) == {"ip_forward": "0"}
        # a crash: nothing undone; the next start of any node recovers first
        run2 = FakeRunner()
        plain = FakeNode(tmp_path)
        svc2 = service(plain, run2, tmp_path)
        await svc2.start()
        assert sysctl.read_text() == "0\n" and not state.exists()
        assert any("delete table ip tunnelmesh_exit" in c for c in run2.calls)
        await svc2.aclose()
        await svc.aclose()

    asyncio.run(main())


def test_exit_node_cannot_be_this_node(tmp_path: Path) -> None:
    with pytest.raises(TunnelmeshError, match="this node itself"):
        ExitService(FakeNode(tmp_path, exit_node="c"))


def test_the_exit_flag_travels_heartbeat_coordinator_push_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    """Over loopback (127.0.0.1, ephemeral ports): an exit's heartbeat flag reaches the other
    peers as a change event and the peer list, and the coordinator keeps it across a restart."""
    from tunnelmesh.config import ServerConfig
    from tunnelmesh.control.client import ControlClient, PeerStatus, fetch_ca
    from tunnelmesh.coordinator.server import CoordinatorServer
    from tunnelmesh.identity import Identity

    token = "exit-test-token-0123456789"
    cfg = ServerConfig(
        auth_token=token,
        listen="127.0.0.1:0",
        stun_listen="127.0.0.1:0",
        data_dir=str(tmp_path / "state"),
    )

    async def client(server: CoordinatorServer, name: str, **kw: Any) -> ControlClient:
        ca = await fetch_ca(server.url, token)
        c = ControlClient(
            server=server.url,
            identity=Identity.generate(),
            ca_pem=ca,
            auth_token=token,
            name=name,
            **kw,
        )
        await c.register()
        return c

    async def main() -> None:
        async with CoordinatorServer(cfg) as server:
            allow = [False]
            e = await client(server, "e", status=lambda: PeerStatus(allow_exit_traffic=allow[0]))
            c = await client(server, "c")
            seen: list[Any] = []
            c.add_callback(seen.append)
            task = asyncio.create_task(c.run())
            await until(lambda: server.coordinator.hub.is_connected(c.identity.peer_id))
            await e.heartbeat()
            listed = {p.name: p for p in (await c.list_peers()).peers}
            assert not listed["e"].allow_exit_traffic
            allow[0] = True
            await e.heartbeat()
            await until(
                lambda: any(
                    isinstance(ch, PeerChanged) and ch.peer.allow_exit_traffic for ch in seen
                )
            )
            assert c.table.by_name("e").allow_exit_traffic  # type: ignore[union-attr]
            await c.aclose()
            await task
            for x in (c, e):
                await x.aclose()
        async with CoordinatorServer(cfg) as again:
            assert again.coordinator.peer_by_name("e").allow_exit_traffic  # type: ignore[union-attr]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_exit_node_this_is_the_coordinators_peer(tmp_path: Path) -> None:
    """`--exit-node this` (as `this.tm` names it) routes through the coordinator's own peer."""

    async def main() -> None:
        run = FakeRunner()
        node = FakeNode(tmp_path, exit_node="this")
        svc = service(node, run, tmp_path)
        await svc.start()
        node.upsert(peer("m", "10.42.0.3", ["192.0.2.3:2223"], exit_ok=True))  # not it
        coord = msgspec.structs.replace(
            peer("coord", "10.42.0.1", ["192.0.2.1:2223"], exit_ok=True), is_coordinator=True
        )
        node.upsert(coord)
        await until(lambda: svc.state == "routed")
        assert node.routes.lookup(bytes([8, 8, 8, 8])).name == "coord"  # type: ignore[union-attr]
        assert any("internet traffic via coord" in line for line in node.lines)
        await svc.aclose()

    asyncio.run(main())


def test_allowed_peers_names_wireguard_clients_by_their_own_id(tmp_path: Path) -> None:
    from tunnelmesh.config import ExitConfig
    from tunnelmesh.control.messages import ClientInfo

    conc_id, phone_id, tablet_id = "c0c0c0c0c0c0c0c0", "a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2"
    node = FakeNode(
        tmp_path, allow_exit_traffic=True, exit=ExitConfig(allowed_peers=[conc_id, phone_id])
    )
    conc = PeerInfo(
        name="conc", peer_id=conc_id, public_key="", wg_public_key="", mesh_ip="10.42.0.9"
    )
    node.sync.peers["conc"] = conc

    def client(cid: str, name: str, ip: str) -> ClientInfo:
        return ClientInfo(
            client_id=cid, name=name, kind="wireguard", public_key="", mesh_ip=ip,
            concentrator=conc_id, exit_peer="e",
        )  # fmt: skip

    node.client.table.clients = (
        client(phone_id, "phone", "10.42.0.50"),
        client(tablet_id, "tablet", "10.42.0.51"),  # its concentrator is listed: not enough
    )
    svc = service(node, FakeRunner(), tmp_path)
    assert svc._refresh_clients() == ["10.42.0.50", "10.42.0.9"]
    assert svc.guard.clients == {"conc", "phone"}
    out = [bytes([0x45]) + bytes(11) + bytes([10, 42, 0, 50]) + bytes([192, 0, 2, 9])]
    assert svc.guard.verdicts(out, "phone", True) == [True]
    assert svc.guard.verdicts(out, "tablet", True) == [False]
