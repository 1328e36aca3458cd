"""The coordinator's STUN port: an asyncio datagram driver around :class:`StunResponder`."""

from __future__ import annotations

import asyncio
import logging
import socket

from tunnelmesh.stun import StunResponder

__all__ = ["StunServer", "start_stun_server"]

log = logging.getLogger(__name__)


def _plain(addr: tuple[str, int] | tuple[str, int, int, int]) -> tuple[str, int]:
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]  # IPv4 client on a dual-stack socket
    return host, addr[1]


class StunServer(asyncio.DatagramProtocol):
    """Answers every Binding request with the address it came from; drops malformed input."""

    def __init__(self, responder: StunResponder | None = None) -> None:
        self.responder = responder or StunResponder()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.responder.handle(data, _plain(addr))
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("STUN socket error: %s", exc)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def start_stun_server(host: str, port: int) -> StunServer:
    """Bind the STUN port (``host`` may be ``0.0.0.0``, ``::`` or an address).

    Raises:
        OSError: the port cannot be bound.
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    _, proto = await loop.create_datagram_endpoint(
        StunServer, local_addr=(host, port), family=family
    )
    return proto
