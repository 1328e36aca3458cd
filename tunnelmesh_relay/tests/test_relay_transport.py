"""The relay end to end over loopback: what the coordinator sees is ciphertext; auth, stats,
rate limit, reconnect and the entry point."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tunnelmesh.abc import Link
from tunnelmesh.coordinator.ca import COORDINATOR_NAME, client_ssl_context
from tunnelmesh.errors import TransportError
from tunnelmesh.registry import Registry
from tunnelmesh.testing.conformance import make_packet
from tunnelmesh_relay.proto import decode_header, split_records
from tunnelmesh_relay.server import RelayConfig
from tunnelmesh_relay.testing import TOKEN, RelayMesh
from tunnelmesh_relay.transport import RelayTransport

from tunnelmesh_relay import plugin

MARKER = b"TUNNELMESH-PLAINTEXT-MARKER-0123456789"


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def marked_packet(seq: int, size: int) -> bytes:
    """An IPv4 packet whose payload is the marker, over and over."""
    head = make_packet(seq, 20)
    body = (MARKER * (size // len(MARKER) + 1))[: size - 20]
    return head[:2] + size.to_bytes(2, "big") + head[4:] + body


async def linked(mesh: RelayMesh) -> tuple[RelayTransport, RelayTransport, Link, list[Link]]:
    a, b = mesh.transport("a"), mesh.transport("b")
    incoming: list[Link] = []
    await a.listen(lambda link: None)
    await b.listen(incoming.append)
    b.update_peer("a", public_key=mesh.identities["a"].public_raw)
    link = await a.dial("b", [], public_key=mesh.identities["b"].public_raw)
    link.send_batch([make_packet(0, 20)])
    await until(lambda: bool(incoming))
    return a, b, link, incoming


def test_entry_point_loads() -> None:
    (ep,) = [e for e in entry_points(group="tunnelmesh") if e.name == "relay"]
    assert ep.load() is plugin
    reg = Registry()
    plugin.tunnelmesh_register_transports(reg)
    plugin.tunnelmesh_register_config_sections(reg)
    assert reg.transports == {"relay": RelayTransport}
    assert reg.config_sections["relay"].type is RelayConfig
    assert reg.config_sections["relay"].server and not reg.config_sections["relay"].peer


def test_relay_forwards_only_ciphertext(tmp_path: Path) -> None:
    """Packets full of a known plaintext arrive intact; the relay never sees that plaintext,
    and everything it forwards is a WireGuard message."""

    async def main() -> None:
        async with RelayMesh(tmp_path, ["a", "b"]) as mesh:
            seen: list[tuple[str, str, bytes]] = []
            mesh.hub.tap = lambda s, d, m: seen.append((s, d, m))
            a, b, link, incoming = await linked(mesh)
            got: list[bytes] = []
            incoming[0].set_receiver(lambda _l, pkts: got.extend(pkts))
            back: list[bytes] = []
            link.set_receiver(lambda _l, pkts: back.extend(pkts))
            sent = [marked_packet(i, 60 + 13 * i) for i in range(100)]
            link.send_batch(sent)
            await until(lambda: len(got) >= 101)
            incoming[0].send_batch(sent[:50])
            await until(lambda: len(back) >= 50)
            assert got == [make_packet(0, 20), *sent]  # the probe linked() sent, then ours
            assert back == sent[:50]

            forwarded = b"".join(m for _s, _d, m in seen)
            assert len(forwarded) > sum(map(len, sent))  # all of it went through the relay
            assert MARKER not in forwarded
            assert MARKER[:16] not in forwarded
            assert {(s, d) for s, d, _m in seen} == {("a", "b"), ("b", "a")}
            kinds = set()
            for _s, _d, m in seen:
                _kind, _name, off = decode_header(m)
                kinds |= {r[0] for r in split_records(m, off)}  # raises unless WireGuard
            assert kinds == {1, 2, 4}  # initiation, response, transport data
            await a.aclose()
            await b.aclose()

    run(main())


def test_websocket_needs_a_session(tmp_path: Path) -> None:
    async def main() -> None:
        async with RelayMesh(tmp_path, ["a"]) as mesh:
            bogus = RelayTransport(
                mesh.identities["a"].x25519_private(),
                server=mesh.url,
                session_token="not-a-session",
                ca_pem=mesh.ca_pem,
            )
            await bogus.listen(lambda link: None)
            with pytest.raises(TransportError, match="401"):
                await bogus.wait_connected(3.0)
            await bogus.aclose()
            assert mesh.hub.conns == {}

    run(main())


def test_stats_for_admins_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with RelayMesh(tmp_path, ["a", "b"]) as mesh:
            a, b, _link, _incoming = await linked(mesh)
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_ssl_context(mesh.ca_pem))
            ) as http:

                async def get(token: str) -> tuple[int, Any]:
                    async with http.get(
                        mesh.url + "/api/v1/relay/stats",
                        headers={"Authorization": f"Bearer {token}"},
                        server_hostname=COORDINATOR_NAME,
                    ) as resp:
                        return resp.status, await resp.json()

                status, body = await get(mesh.sessions["a"])  # the first peer is admin
                assert status == 200
                assert body["connected"] == ["a", "b"]
                assert body["peers"]["a"]["rx_packets"] >= 2  # initiation, keepalive, packet
                assert body["peers"]["b"]["tx_bytes"] > 0
                # the mesh join token is no operator credential
                assert (await get(TOKEN))[0] == 403
                assert (await get(mesh.sessions["b"]))[0] == 403
                assert (await get("nonsense"))[0] == 401
            await a.aclose()
            await b.aclose()

    run(main())


def test_per_peer_rate_limit(tmp_path: Path) -> None:
    async def main() -> None:
        relay = RelayConfig(rate_bytes_per_second=20_000, burst_bytes=20_000)
        async with RelayMesh(tmp_path, ["a", "b"], relay=relay) as mesh:
            a, b, link, incoming = await linked(mesh)
            got: list[bytes] = []
            incoming[0].set_receiver(lambda _l, pkts: got.extend(pkts))
            for i in range(20):  # 20 messages of ~10 KB at once: the bucket holds 20 KB
                link.send_batch([make_packet(100 * i + j, 1000) for j in range(10)])
            await until(lambda: mesh.hub.counters["a"].dropped_rate >= 10)
            assert len(got) < 100
            assert mesh.hub.counters["b"].dropped_rate == 0
            await a.aclose()
            await b.aclose()

    run(main())


def test_sessions_survive_a_relay_reconnect(tmp_path: Path) -> None:
    async def main() -> None:
        async with RelayMesh(tmp_path, ["a", "b"]) as mesh:
            a, b, link, incoming = await linked(mesh)
            handshake = a.engine.peer_by_name("b").last_handshake  # type: ignore[union-attr]
            await mesh.hub.conns["a"].ws.close()
            await until(lambda: a.stats["connects"] == 2 and a.connected)
            got: list[bytes] = []
            incoming[0].set_receiver(lambda _l, pkts: got.extend(pkts))
            link.send_batch([make_packet(7, 500)])
            await until(lambda: got[-1:] == [make_packet(7, 500)])
            assert a.engine.peer_by_name("b").last_handshake == handshake  # type: ignore[union-attr]
            await a.aclose()
            await b.aclose()

    run(main())


def test_dial_fails_fast_when_the_peer_is_not_on_the_relay(tmp_path: Path) -> None:
    async def main() -> None:
        async with RelayMesh(tmp_path, ["a", "b"]) as mesh:
            a = mesh.transport("a")
            await a.listen(lambda link: None)
            started = time.monotonic()
            with pytest.raises(TransportError, match="not on the relay"):
                await a.dial("b", [], public_key=mesh.identities["b"].public_raw)
            assert time.monotonic() - started < 5.0  # before the first handshake retry
            await a.aclose()

    run(main())


def test_from_node_follows_the_node_session(tmp_path: Path) -> None:
    from types import SimpleNamespace

    async def main() -> None:
        async with RelayMesh(tmp_path, ["a"]) as mesh:
            ca = tmp_path / "ca.crt"
            ca.write_text(mesh.ca_pem)
            client = SimpleNamespace(session_token="stale", announced=[])
            node = SimpleNamespace(
                x25519_private_key=mesh.identities["a"].x25519_private(),
                context=SimpleNamespace(server=mesh.url, ca_path=str(ca)),
                client=client,
                config=SimpleNamespace(tun=SimpleNamespace(mtu=1420)),
            )
            t = RelayTransport.from_node(node)
            assert t.url == mesh.url.replace("https://", "wss://") + "/api/v1/relay"
            client.session_token = mesh.sessions["a"]  # the node registered (again)
            await t.listen(lambda link: None)
            await t.wait_connected(10.0)
            assert "a" in mesh.hub.conns
            await t.aclose()

    run(main())


def test_a_peer_that_leaves_or_changes_keys_loses_its_link(tmp_path: Path) -> None:
    async def main() -> None:
        async with RelayMesh(tmp_path, ["a", "b"]) as mesh:
            a, b, _link, incoming = await linked(mesh)
            b.update_peer("a", public_key=mesh.identities["a"].public_raw)  # unchanged: kept
            await asyncio.sleep(0.05)
            assert not incoming[0].closed  # type: ignore[attr-defined]
            b.update_peer("a")  # left the mesh
            with pytest.raises(TransportError):
                await asyncio.wait_for(incoming[0].recv_batch(), 10)
            assert b.engine.peer_by_name("a") is None
            await a.aclose()
            await b.aclose()

    run(main())


def test_a_network_change_reconnects_at_once(tmp_path: Path) -> None:
    """The node's network monitor tells the transport; it does not wait for its 20 s ping
    timeout to find the old connection dead, and the links carry on."""

    async def main() -> None:
        async with RelayMesh(tmp_path, ["a", "b"]) as mesh:
            a, b, link, incoming = await linked(mesh)
            a.network_changed()
            await until(lambda: a.stats["connects"] == 2 and a.connected, timeout=5.0)
            assert a.stats["network_changes"] == 1
            got: list[bytes] = []
            incoming[0].set_receiver(lambda _l, pkts: got.extend(pkts))
            link.send_batch([make_packet(9, 300)])
            await until(lambda: got[-1:] == [make_packet(9, 300)])
            await a.aclose()
            await b.aclose()

    run(main())
