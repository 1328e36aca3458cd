"""The ``udp`` entry point loads and registers the transport and the ``udp`` command; the
transport carries packets between two instances over loopback (asyncio and uvloop)."""

from __future__ import annotations

import asyncio
import os
from importlib.metadata import entry_points

import pytest
import uvloop
from tunnelmesh.abc import Link
from tunnelmesh.registry import Registry
from tunnelmesh_udp.transport import UdpTransport

from tunnelmesh_udp import plugin


def test_entry_point_loads() -> None:
    (ep,) = [e for e in entry_points(group="tunnelmesh") if e.name == "udp"]
    assert ep.load() is plugin
    reg = Registry()
    plugin.tunnelmesh_register_transports(reg)
    assert reg.transports == {"udp": UdpTransport}
    import click

    group = click.Group()
    plugin.tunnelmesh_register_commands(group)
    assert "udp" in group.commands


def _packet(i: int) -> bytes:
    return bytes([0x45, 0, 0, 24, 0, 0, 0, 0, 64, 17, 0, 0, 10, 42, 0, 1, 10, 42, 0, 2]) + (
        i.to_bytes(4, "big")
    )


async def _roundtrip() -> None:
    a = UdpTransport(os.urandom(32), listen="127.0.0.1:0")
    b = UdpTransport(os.urandom(32), listen="127.0.0.1:0")
    incoming: list[Link] = []
    await a.listen(lambda link: None)
    await b.listen(incoming.append)
    try:
        await _exchange(a, b, incoming)
    finally:
        await a.aclose()
        await b.aclose()


async def _exchange(a: UdpTransport, b: UdpTransport, incoming: list[Link]) -> None:
    got: asyncio.Queue[list[bytes]] = asyncio.Queue()
    host, port = b.local_address
    link = a.add_wireguard_peer("b", b.public_key, f"{host}:{port}")
    b_link = b.add_wireguard_peer("a", a.public_key)  # configured here: not "incoming"

    def deliver(_l: Link, pkts: list[bytes]) -> None:
        return got.put_nowait(pkts)

    link.send_batch([_packet(i) for i in range(100)])  # staged until the handshake is done
    received: list[bytes] = []
    async with asyncio.timeout(5):
        b_link.set_receiver(deliver)
        while len(received) < 100:
            received.extend(await got.get())
    assert received == [_packet(i) for i in range(100)]
    assert a.handshakes == 1 and b.handshakes == 1
    assert incoming == []
    # dial() of an existing session returns at once; a batch goes out in GSO runs
    link2 = await a.dial("b", [f"{host}:{port}"])
    link2.send_batch([_packet(i) for i in range(200)])
    async with asyncio.timeout(5):
        while len(received) < 300:
            received.extend(await got.get())
    assert received[100:] == [_packet(i) for i in range(200)]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_two_transports_over_loopback(loop: str) -> None:
    if loop == "uvloop":
        uvloop.run(_roundtrip())
    else:
        asyncio.run(_roundtrip())
