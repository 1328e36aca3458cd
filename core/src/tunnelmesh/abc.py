"""The small interfaces that plugins implement.

Hooks (see :mod:`tunnelmesh.hookspecs`) run on the control plane and hand back *classes* that
implement these interfaces. The data plane then calls the methods of their instances directly:
never a pluggy hook per packet.

Every class carries ``name: ClassVar[str]``, the one word that names the feature everywhere
(directory ``tunnelmesh_udp``, distribution ``tunnelmesh-udp``, entry point ``udp``, extra ``udp``,
``Transport.name == "udp"``).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, ClassVar

import msgspec

__all__ = [
    "DnsBackend",
    "Link",
    "PacketFilter",
    "PathQuality",
    "ProxyRule",
    "Storage",
    "Transport",
    "TransportCapabilities",
    "Upstream",
]

Packet = bytes | bytearray | memoryview


class TransportCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a transport can do; negotiation reads this to order and filter transports.

    Attributes:
        incoming: accepts links that a remote peer dials.
        nat_punch: can open a path through NATs by simultaneous open (hole punching).
        reliable: delivers every datagram (stream transports); datagram transports say False.
        ordered: delivers datagrams in order.
        max_mtu: the largest datagram a link carries without fragmenting.
    """

    incoming: bool = True
    nat_punch: bool = False
    reliable: bool = False
    ordered: bool = False
    max_mtu: int = 1420


class PathQuality(msgspec.Struct, frozen=True, kw_only=True):
    """The measured quality of a path to a peer, as returned by :meth:`Transport.probe`."""

    rtt_ms: float
    loss: float = 0.0


class Link(abc.ABC):
    """One established path to one peer. Carries opaque datagrams (tunnel ciphertext).

    Links are async resources: ``async with link: ...`` closes them.
    """

    peer: str
    """The name of the peer at the other end."""

    mtu: int
    """The largest datagram :meth:`send_batch` accepts."""

    @abc.abstractmethod
    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        """Queue datagrams for sending, without waiting.

        Raises:
            TransportError: the link is closed. A full queue drops, it never blocks.
        """

    @abc.abstractmethod
    async def recv_batch(self) -> list[bytes]:
        """Wait for and return one or more received datagrams.

        Raises:
            TransportError: the link is closed (also for every call after :meth:`aclose`).
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the link. Idempotent; pending :meth:`recv_batch` calls raise TransportError."""

    async def __aenter__(self) -> Link:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Transport(abc.ABC):
    """A way to reach peers (UDP, SSH, relay, ...). One instance per running node."""

    name: ClassVar[str]
    capabilities: ClassVar[TransportCapabilities] = TransportCapabilities()

    @abc.abstractmethod
    async def listen(self, on_link: Callable[[Link], None]) -> None:
        """Start accepting incoming links; ``on_link`` is called with each new one."""

    @abc.abstractmethod
    async def dial(self, peer: str, endpoints: Sequence[str]) -> Link:
        """Open a link to ``peer`` at one of ``endpoints`` (``host:port`` strings).

        Raises:
            TransportError: no endpoint could be reached.
        """

    async def probe(self, peer: str, endpoints: Sequence[str]) -> PathQuality | None:
        """Measure the path to ``peer``; None when it cannot be measured (the default)."""
        return None

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop listening and close every link. Idempotent."""

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class PacketFilter(abc.ABC):
    """Decides which IP packets pass between the TUN device and the tunnels."""

    name: ClassVar[str]

    @abc.abstractmethod
    def verdicts(self, packets: Sequence[Packet], peer: str, inbound: bool) -> Sequence[bool]:
        """Return one verdict per packet (True passes). Called once per batch, never raises."""


class DnsBackend(abc.ABC):
    """Answers names inside the mesh domain for the built-in resolver."""

    name: ClassVar[str]

    @abc.abstractmethod
    def lookup(self, qname: str, qtype: str) -> list[str] | None:
        """Return the record values for ``qname``/``qtype`` ("A", "AAAA", "PTR"), or None.

        None means "not a name of mine"; an empty list means "my name, no such record".
        """


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a storage backend knows of one stored object."""

    key: str
    size: int
    etag: str
    last_modified: float
    content_type: str = "application/octet-stream"
    metadata: Mapping[str, str] = msgspec.field(default_factory=dict)


class Storage(abc.ABC):
    """Stores objects in buckets (the S3 service's backend). Writes are atomic and durable."""

    name: ClassVar[str]

    @abc.abstractmethod
    async def put_object(
        self,
        bucket: str,
        key: str,
        body: AsyncIterator[bytes],
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Store ``body`` under ``bucket``/``key``; visible only once complete and synced."""

    @abc.abstractmethod
    async def get_object(
        self, bucket: str, key: str, *, start: int = 0, end: int | None = None
    ) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        """Return the object's info and a stream of its bytes ``[start, end)``."""

    @abc.abstractmethod
    async def delete_object(self, bucket: str, key: str) -> None:
        """Remove an object; removing an absent object is not an error."""


class Upstream(msgspec.Struct, frozen=True):
    """Where a proxy rule sends a request."""

    host: str
    port: int


class ProxyRule(abc.ABC):
    """Chooses the upstream for a request arriving at the reverse proxy."""

    name: ClassVar[str]

    @abc.abstractmethod
    def route(self, headers: Mapping[str, str], default: Any = None) -> Upstream | None:
        """Return the upstream for a request with these (lower-cased) headers, or None.

        None means "no opinion": the next rule is asked. A rule that recognises its header but
        finds it malformed raises :class:`ValueError` with a reason the proxy sends as a 400.
        """
