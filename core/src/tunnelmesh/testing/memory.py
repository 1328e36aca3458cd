"""An in-memory transport double: links are pairs of queues inside one event loop.

:class:`MemoryTransport` behaves like a real transport as far as the
:class:`~tunnelmesh.abc.Transport` contract goes (keys checked on dial, ordered and reliable,
close semantics), so node and forwarder tests can run without sockets, and it is the reference
the conformance suite (:mod:`tunnelmesh.testing.conformance`) is tested against::

    net = MemoryNetwork()
    a = MemoryTransport(net, "a", key_a)          # key_a: raw ed25519 public key of "a"
    b = MemoryTransport(net, "b", key_b)
    b.update_peer("a", public_key=key_a)          # b accepts links from a
    await b.listen(on_link)
    link = await a.dial("b", [b.endpoint], public_key=key_b)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import ClassVar

from tunnelmesh.abc import Link, Packet, Transport, TransportCapabilities
from tunnelmesh.aio.queuedlink import QueuedLink
from tunnelmesh.errors import TransportError

__all__ = ["MemoryLink", "MemoryNetwork", "MemoryTransport"]


class MemoryNetwork:
    """Where memory transports find each other by endpoint (``mem:<n>``)."""

    def __init__(self) -> None:
        self.listeners: dict[str, MemoryTransport] = {}
        self._ids = itertools.count(1)

    def new_endpoint(self) -> str:
        return f"mem:{next(self._ids)}"


class MemoryLink(QueuedLink):
    """One end of an in-memory link (its queue has no limit: the double is reliable)."""

    def __init__(self, peer: str, mtu: int) -> None:
        super().__init__(peer, mtu, queue_size=0)
        self.other: MemoryLink | None = None

    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        if self.closed:
            raise self._closed_error()
        other = self.other
        if other is None or other.closed or not datagrams:
            return
        other._received([bytes(d) for d in datagrams if len(d) <= self.mtu])

    async def aclose(self) -> None:
        if self.closed:
            return
        await super().aclose()
        other, self.other = self.other, None
        if other is not None:
            await other.aclose()


class MemoryTransport(Transport):
    """An in-memory transport for tests. See the module docstring.

    Args:
        network: the shared :class:`MemoryNetwork`.
        name: this node's peer name (what the other end sees as ``link.peer``).
        public_key: this node's raw ed25519 public key (dialers must name it).
        mtu: the MTU of its links.
    """

    name: ClassVar[str] = "memory"
    capabilities: ClassVar[TransportCapabilities] = TransportCapabilities(
        incoming=True, nat_punch=False, reliable=True, ordered=True, max_mtu=65535
    )

    def __init__(
        self, network: MemoryNetwork, name: str, public_key: bytes, *, mtu: int = 1420
    ) -> None:
        self.network = network
        self.peer_name = name
        self.public_key = public_key
        self.mtu = mtu
        self.endpoint = network.new_endpoint()
        self.links: list[MemoryLink] = []
        self.known: dict[str, bytes] = {}
        """Peers allowed to dial us, by name (see :meth:`update_peer`)."""
        self._on_link: Callable[[Link], None] | None = None
        self._closed = False

    def update_peer(
        self, peer: str, *, public_key: bytes = b"", endpoints: Sequence[str] = ()
    ) -> None:
        if public_key:
            self.known[peer] = public_key
        else:
            self.known.pop(peer, None)

    async def listen(self, on_link: Callable[[Link], None]) -> None:
        if self._closed:
            raise TransportError("memory transport is closed")
        self._on_link = on_link
        self.network.listeners[self.endpoint] = self

    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        if self._closed:
            raise TransportError("memory transport is closed")
        for endpoint in endpoints:
            other = self.network.listeners.get(endpoint)
            if other is None or other.peer_name != peer:
                continue
            if public_key != other.public_key:
                raise TransportError(f"memory: {peer} at {endpoint} has another key")
            if other.known.get(self.peer_name) != self.public_key:
                raise TransportError(f"memory: {peer} does not know us ({self.peer_name})")
            mine, theirs = MemoryLink(peer, self.mtu), MemoryLink(self.peer_name, other.mtu)
            mine.other, theirs.other = theirs, mine
            self.links.append(mine)
            other.links.append(theirs)
            if other._on_link is not None:
                other._on_link(theirs)
            return mine
        raise TransportError(f"memory: no listener for {peer} at {list(endpoints)}")

    async def aclose(self) -> None:
        self._closed = True
        if self.network.listeners.get(self.endpoint) is self:
            del self.network.listeners[self.endpoint]
        links, self.links = self.links, []
        for link in links:
            await link.aclose()
