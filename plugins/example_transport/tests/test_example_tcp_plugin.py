"""The installed distribution is found by tunnelmesh's plugin manager, and TCP carries only
WireGuard ciphertext."""

from __future__ import annotations

import asyncio

from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.identity import Identity
from tunnelmesh.testing.conformance import make_packet
from tunnelmesh_example_tcp import TcpTransport, plugin


def test_the_entry_point_registers_the_transport() -> None:
    pm = make_plugin_manager(builtins=False)
    assert pm.is_registered(plugin)
    assert pm.build_registry().transports["example_tcp"] is TcpTransport


def test_tcp_carries_ciphertext_only() -> None:
    marker = b"EXAMPLE-TCP-PLAINTEXT-MARKER"

    async def main() -> bytes:
        a, b = Identity.generate(), Identity.generate()
        listener = TcpTransport(b.x25519_private(), listen="127.0.0.1:0")
        listener.update_peer("a", public_key=a.public_raw)
        got: list[bytes] = []
        await listener.listen(lambda link: link.set_receiver(lambda _l, p: got.extend(p)))
        port = listener.local_address[1]
        wire = bytearray()

        # a TCP proxy in the middle records what crosses the wire
        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                wire.extend(data)
                w.write(data)
            w.close()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ur, uw = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.gather(pipe(r, uw), pipe(ur, w))

        proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
        proxy_port = proxy.sockets[0].getsockname()[1]
        dialer = TcpTransport(a.x25519_private(), listen="127.0.0.1:0")
        await dialer.listen(lambda link: None)
        link = await dialer.dial("b", [f"127.0.0.1:{proxy_port}"], public_key=b.public_raw)
        packet = make_packet(1, 20) + marker * 20
        packet = packet[:2] + len(packet).to_bytes(2, "big") + packet[4:]
        link.send_batch([packet] * 10)
        for _ in range(500):
            if len(got) == 10:
                break
            await asyncio.sleep(0.01)
        assert got == [packet] * 10
        await dialer.aclose()
        await listener.aclose()
        proxy.close()
        return bytes(wire)

    wire = asyncio.run(asyncio.wait_for(main(), 30))
    assert len(wire) > 10 * 560
    assert marker not in wire
