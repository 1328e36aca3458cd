"""The concentrator over loopback, without root: a bare WireGuard engine on a UDP socket plays
the phone, a pipe stands in for the TUN device, and the node is a small stand-in with the real
routing table, forwarder and client routes."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from tunnelmesh.abc import Link
from tunnelmesh.aio.wgsession import WireGuardLink
from tunnelmesh.aio.wgsocket import WireGuardSocket
from tunnelmesh.mesh.forwarder import Forwarder
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.node.clients import ClientRoutes
from tunnelmesh.proto import WireGuard
from tunnelmesh_wg.concentrator import Concentrator, WireGuardSection

ME = "a" * 16  # this node's peer ID
PHONE_IP = "10.42.0.50"
NODE_IP = "10.42.0.1"


class Client(msgspec.Struct, kw_only=True, frozen=True):
    """A pushed client record (the fields ``tunnelmesh.node.clients.ClientRecord`` reads)."""

    client_id: str
    name: str
    public_key: str
    mesh_ip: str
    concentrator: str = ME
    active: bool = True
    expires_at: float = 0.0
    exit_peer: str = ""
    preshared_key: str = ""


class Host:
    """The node, as far as the concentrator uses it."""

    def __init__(self, tun_fd: int) -> None:
        self.x25519_private_key = os.urandom(32)
        self.config = msgspec.convert({"tun": {"mtu": 1420}}, type=_Config)
        self.routes = RoutingTable()
        self.forwarder = Forwarder(tun_fd, self.routes)

        def relay(on: bool) -> None:
            self.forwarder.relay = on

        self.wg_clients = ClientRoutes(self.routes, ME, lambda pid: None, set_relay=relay)

    def attach_link(self, link: Link) -> None:
        self.forwarder.attach(link)

    def detach_link(self, name: str, link: Link | None) -> None:
        route = self.routes.peers.get(name)
        if route is not None and (link is None or route.link is link):
            self.routes.set_link(name, None)


class _Tun(msgspec.Struct):
    mtu: int


class _Config(msgspec.Struct):
    tun: _Tun


def ip4(src: str, dst: str, payload: bytes = b"ping") -> bytes:
    n = 20 + len(payload)
    return (
        bytes([0x45, 0, n >> 8, n & 255, 0, 0, 0, 0, 64, 17, 0, 0])
        + socket.inet_aton(src)
        + socket.inet_aton(dst)
        + payload
    )


class Phone:
    """A stock WireGuard peer: one engine on its own UDP socket, the concentrator its peer."""

    def __init__(self, conc: Concentrator, psk: bytes = bytes(32)) -> None:
        self.private = os.urandom(32)
        self.engine = WireGuard(self.private)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.received: list[bytes] = []
        self.socket = WireGuardSocket(
            self.engine, sock, gso=False, gro=False, watch_addresses=False, on_link=self._link
        )
        self.socket.start()
        self.peer = self.engine.add_peer(
            conc.public_key, name="conc", endpoint=("127.0.0.1", conc.port), preshared_key=psk
        )
        self.link = self.socket.link_for(self.peer)
        self.link.set_receiver(lambda link, packets: self.received.extend(packets))

    def _link(self, link: WireGuardLink) -> None:
        link.set_receiver(lambda link, packets: self.received.extend(packets))

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.engine.public_key).decode()

    def reset(self) -> None:
        """Forget the session and the handshake in progress (a fresh start after refusals)."""
        old = self.peer
        psk = bytes(old.handshake.preshared_key)
        self.engine.remove_peer(old.public_key)
        del self.socket.links[old.public_key]  # its link sends with the removed peer
        self.peer = self.engine.add_peer(
            old.public_key, name="conc", endpoint=old.endpoint, preshared_key=psk
        )
        self.link = self.socket.link_for(self.peer)

    def send(self, packet: bytes) -> None:
        self.link.send_batch([packet])

    def close(self) -> None:
        self.socket.close()


async def _poll(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def _read_all(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


async def _scenario(body: Callable[[Host, Concentrator, int, int], Any]) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    host = Host(w)
    section = WireGuardSection(
        enabled=True, listen_port=0, endpoint="vpn.example.org:51820", listen_address="127.0.0.1"
    )
    conc = Concentrator(host, section)  # type: ignore[arg-type]
    conc.start()
    try:
        await body(host, conc, r, w)
    finally:
        conc.close()
        host.wg_clients.close()
        os.close(r)
        os.close(w)


def test_a_client_reaches_the_node_and_only_with_its_own_address() -> None:
    async def body(host: Host, conc: Concentrator, r: int, w: int) -> None:
        phone = Phone(conc)
        try:
            host.wg_clients.apply(
                [
                    Client(
                        client_id="c1", name="phone", public_key=phone.public_b64, mesh_ip=PHONE_IP
                    )
                ]
            )
            assert host.forwarder.relay and host.routes.peers["phone"].client
            good = ip4(PHONE_IP, NODE_IP)
            phone.send(good)  # the phone initiates; the packet waits for the session
            await _poll(lambda: host.forwarder.stats["rx_packets"] == 1)
            assert _read_all(r) == good
            phone.send(ip4("10.42.0.9", NODE_IP))  # another address: spoofed
            await _poll(lambda: host.forwarder.stats["dropped_spoofed"] == 1)
            # the node answers: out through the TUN's route to the client's link
            route = host.routes.peers["phone"]
            assert route.link is not None
            route.link.send_batch([ip4(NODE_IP, PHONE_IP, b"pong")])
            await _poll(lambda: phone.received == [ip4(NODE_IP, PHONE_IP, b"pong")])
            status = conc.status()["c1"]
            assert status["latest_handshake"] == pytest.approx(time.time(), abs=5)
            assert status["rx_bytes"] > 0 and status["tx_bytes"] > 0
            assert status["endpoint"] == f"127.0.0.1:{phone.socket.sock.getsockname()[1]}"
            described = conc.describe()  # node.status
            assert described["listen_port"] == conc.port
            assert described["endpoint"] == "vpn.example.org:51820"
            assert described["clients"]["phone"] == status
            assert described["public_key"] == base64.b64encode(conc.public_key).decode()
        finally:
            phone.close()

    asyncio.run(_scenario(body))


def test_disabling_a_client_stops_its_traffic_at_once_and_enabling_brings_it_back() -> None:
    async def body(host: Host, conc: Concentrator, r: int, w: int) -> None:
        phone = Phone(conc)
        record = Client(client_id="c1", name="phone", public_key=phone.public_b64, mesh_ip=PHONE_IP)
        try:
            host.wg_clients.apply([record])
            phone.send(ip4(PHONE_IP, NODE_IP))
            await _poll(lambda: host.forwarder.stats["rx_packets"] == 1)
            _read_all(r)
            host.wg_clients.apply([msgspec.structs.replace(record, active=False)])
            assert "phone" not in host.routes.peers and not host.forwarder.relay
            assert conc.engine.peers == {} and conc.clients == {}
            phone.send(ip4(PHONE_IP, NODE_IP))  # its old session: dropped by the engine
            await _poll(lambda: conc.engine.drops["unknown_index"] == 1)
            assert host.forwarder.stats["rx_packets"] == 1 and _read_all(r) == b""
            host.wg_clients.apply([record])  # enabled again: a new handshake is accepted
            phone.reset()  # a new handshake now (wireguard-go would retry within 5 s)
            phone.send(ip4(PHONE_IP, NODE_IP, b"again"))
            await _poll(lambda: host.forwarder.stats["rx_packets"] == 2)
            assert _read_all(r) == ip4(PHONE_IP, NODE_IP, b"again")
        finally:
            phone.close()

    asyncio.run(_scenario(body))


def test_an_expired_client_cannot_handshake_and_expiry_needs_no_push() -> None:
    async def body(host: Host, conc: Concentrator, r: int, w: int) -> None:
        phone = Phone(conc)
        try:
            expired = Client(
                client_id="c1",
                name="phone",
                public_key=phone.public_b64,
                mesh_ip=PHONE_IP,
                expires_at=time.time() - 1,
            )
            host.wg_clients.apply([expired])
            assert conc.engine.peers == {}
            phone.send(ip4(PHONE_IP, NODE_IP))
            await _poll(lambda: conc.engine.drops["bad_handshake"] >= 1)
            assert not phone.engine.has_session(phone.peer, phone.socket.now())
            # a client that expires while connected is dropped at its expiry, without a push
            soon = msgspec.structs.replace(expired, expires_at=time.time() + 0.5)
            host.wg_clients.apply([soon])
            phone.reset()
            phone.send(ip4(PHONE_IP, NODE_IP))
            await _poll(lambda: host.forwarder.stats["rx_packets"] == 1)
            await _poll(lambda: conc.engine.peers == {}, timeout=3)
            assert "phone" not in host.routes.peers
        finally:
            phone.close()

    asyncio.run(_scenario(body))


def test_a_preshared_key_must_match() -> None:
    async def body(host: Host, conc: Concentrator, r: int, w: int) -> None:
        psk = os.urandom(32)
        right, wrong = Phone(conc, psk), Phone(conc, os.urandom(32))
        try:
            host.wg_clients.apply(
                [
                    Client(
                        client_id="c1",
                        name="phone",
                        public_key=right.public_b64,
                        mesh_ip=PHONE_IP,
                        preshared_key=base64.b64encode(psk).decode(),
                    ),
                    Client(
                        client_id="c2",
                        name="tablet",
                        public_key=wrong.public_b64,
                        mesh_ip="10.42.0.51",
                        preshared_key=base64.b64encode(psk).decode(),
                    ),
                ]
            )
            right.send(ip4(PHONE_IP, NODE_IP))
            wrong.send(ip4("10.42.0.51", NODE_IP))
            await _poll(lambda: host.forwarder.stats["rx_packets"] == 1)
            # the tablet's wrong PSK: the concentrator's response does not authenticate
            await _poll(lambda: wrong.engine.drops["bad_handshake"] >= 1)
            assert _read_all(r) == ip4(PHONE_IP, NODE_IP)
        finally:
            right.close()
            wrong.close()

    asyncio.run(_scenario(body))


def test_bad_keys_are_not_served_and_a_key_serves_one_client() -> None:
    async def body(host: Host, conc: Concentrator, r: int, w: int) -> None:
        key = base64.b64encode(os.urandom(32)).decode()
        host.wg_clients.apply(
            [
                Client(client_id="c1", name="bad", public_key="not base64!", mesh_ip="10.42.0.60"),
                Client(client_id="c2", name="one", public_key=key, mesh_ip="10.42.0.61"),
                Client(client_id="c3", name="two", public_key=key, mesh_ip="10.42.0.62"),
            ]
        )
        assert sorted(conc.clients) == ["one"]

    asyncio.run(_scenario(body))
