"""The small interfaces that plugins implement.

Hooks (see :mod:`tunnelmesh.hookspecs`) run on the control plane and hand back *classes* that
implement these interfaces. The data plane then calls the methods of their instances directly:
never a pluggy hook per packet.

Every class carries ``name: ClassVar[str]``, the one word that names the feature everywhere
(directory ``tunnelmesh_udp``, distribution ``tunnelmesh-udp``, entry point ``udp``, extra ``udp``,
``Transport.name == "udp"``).

The object storage interface (:class:`Storage` and its records) is written in
:mod:`tunnelmesh.storage.interface`, beside the storage naming rules and conformance kit, and
imported from here like every other interface.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import msgspec

from tunnelmesh.storage.interface import (
    BucketInfo,
    LocalFiles,
    ObjectInfo,
    ObjectListing,
    ObjectReader,
    PartInfo,
    Storage,
    UploadInfo,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tunnelmesh.config import PeerConfig, ServerConfig
    from tunnelmesh.control.client import ControlClient
    from tunnelmesh.control.contexts import Context, ContextStore
    from tunnelmesh.coordinator.ca import MeshCa
    from tunnelmesh.coordinator.clients import ClientBook
    from tunnelmesh.coordinator.store import PeerRecord, StateStore
    from tunnelmesh.identity import Identity
    from tunnelmesh.mesh.forwarder import Forwarder
    from tunnelmesh.mesh.routing import RoutingTable
    from tunnelmesh.node.clients import ClientRoutes
    from tunnelmesh.node.peers import PeerSync

__all__ = [
    "BucketInfo",
    "ConcentratorHost",
    "ConcentratorView",
    "CoordinatorView",
    "DnsBackend",
    "ExitHost",
    "Link",
    "LocalFiles",
    "NodeView",
    "ObjectInfo",
    "ObjectListing",
    "ObjectReader",
    "PacketFilter",
    "PartInfo",
    "PathQuality",
    "ProxyRule",
    "Storage",
    "StunProber",
    "Transport",
    "TransportCapabilities",
    "TransportHost",
    "UploadInfo",
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
    """One established path to one peer. Carries IP packets.

    The transport protects what crosses it: the UDP and relay transports seal every packet as a
    WireGuard transport message (:mod:`tunnelmesh.proto.wireguard`), SSH uses its channel
    encryption. Packets a link hands over came from :attr:`peer` (authenticated); the forwarder
    still checks that their inner source address is one of that peer's.

    Two ways to receive: pull (``await recv_batch()``) or push (:meth:`set_receiver`), which the
    forwarder uses so that no task switch happens per batch. Links are async resources:
    ``async with link: ...`` closes them.
    """

    peer: str
    """The name of the peer at the other end."""

    mtu: int
    """The largest IP packet :meth:`send_batch` accepts."""

    closed: bool = False
    """True once the link is closed (by either side); a link sets it on its instance."""

    @abc.abstractmethod
    def send_batch(self, datagrams: Sequence[Packet]) -> None:
        """Queue IP packets for sending, without waiting.

        Raises:
            TransportError: the link is closed. A full queue drops, it never blocks.
        """

    @abc.abstractmethod
    async def recv_batch(self) -> list[bytes]:
        """Wait for and return one or more received IP packets.

        Raises:
            TransportError: the link is closed (also for every call after :meth:`aclose`).
        """

    def set_receiver(self, deliver: Callable[[Link, list[bytes]], None] | None) -> None:
        """Push mode: call ``deliver(self, packets)`` for every received batch (None stops).

        The default runs a task that loops over :meth:`recv_batch`; datagram transports
        override it to call ``deliver`` straight from their socket callback. ``deliver`` must
        not block and must not raise.
        """
        import asyncio

        task: asyncio.Task[None] | None = getattr(self, "_receiver_task", None)
        if task is not None:
            task.cancel()
            self._receiver_task = None
        if deliver is None:
            return

        async def pump() -> None:
            from tunnelmesh.errors import TransportError

            try:
                while True:
                    deliver(self, await self.recv_batch())
            except TransportError:
                return

        self._receiver_task = asyncio.get_running_loop().create_task(pump())

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the link. Idempotent; pending :meth:`recv_batch` calls raise TransportError."""

    async def __aenter__(self) -> Link:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Transport(abc.ABC):
    """A way to reach peers (UDP, SSH, relay, ...). One instance per running node.

    The node tells a transport which peers exist (:meth:`update_peer`) before links to or from
    them can be made: a transport that authenticates peers (WireGuard, SSH) needs their public
    keys to accept an incoming link at all.
    """

    name: ClassVar[str]
    capabilities: ClassVar[TransportCapabilities] = TransportCapabilities()
    preference: ClassVar[int] = 100
    """Where the transport comes in a node's default order (``transports.order`` empty or
    leaving it out): lower first, equal ones by name. The UDP transport says 10, SSH 20, the
    relay 30.

    .. versionadded:: 0.1
    """

    @classmethod
    def from_node(cls, node: TransportHost) -> Transport:
        """Build this transport for a running node (the node calls it for each registered one).

        By default ``cls(node.x25519_private_key, listen=node.listen_address,
        mtu=node.config.tun.mtu)``; a transport whose constructor differs overrides this. A
        TypeError here makes the node skip the transport with a warning.
        """
        factory: Callable[..., Transport] = cls
        return factory(node.x25519_private_key, listen=node.listen_address, mtu=node.config.tun.mtu)

    @abc.abstractmethod
    async def listen(self, on_link: Callable[[Link], None]) -> None:
        """Start accepting incoming links; ``on_link`` is called with each new one."""

    @abc.abstractmethod
    async def dial(self, peer: str, endpoints: Sequence[str], *, public_key: bytes = b"") -> Link:
        """Open a link to ``peer`` at one of ``endpoints`` (``host:port`` strings).

        Args:
            peer: the peer's name.
            endpoints: where it may be reached, best first (local, then STUN-reflexive).
            public_key: the peer's raw 32-byte ed25519 identity key, for transports that
                authenticate the other end.

        Raises:
            TransportError: no endpoint could be reached.
        """

    def update_peer(  # noqa: B027 - optional: transports without peer state ignore it
        self, peer: str, *, public_key: bytes = b"", endpoints: Sequence[str] = ()
    ) -> None:
        """Learn (or, with an empty ``public_key``, forget) a peer; the default ignores it."""

    async def probe(self, peer: str, endpoints: Sequence[str]) -> PathQuality | None:
        """Measure the path to ``peer``; None when it cannot be measured (the default)."""
        return None

    def traffic(self) -> dict[str, tuple[int, int]]:
        """Bytes received and sent per peer name, ``(rx, tx)``, since the transport started
        (links that closed included): the node's traffic counters in its heartbeats. A
        transport on :class:`tunnelmesh.aio.wgsession.WireGuardSession` returns its
        ``session.traffic()``. The default: none.

        .. versionadded:: 0.1
        """
        return {}

    def network_changed(self) -> None:  # noqa: B027 - optional: the default does nothing
        """The host's underlay network changed (an address or route came or went; the node's
        network monitor calls it, debounced). A transport holding a connection that may now
        be dead (a relay's WebSocket) re-establishes it at once instead of waiting for its own
        timeouts. Never blocks; the default ignores it.

        .. versionadded:: 0.1
        """

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
    """Answers names inside the mesh domain for the built-in resolver.

    A backend that also has an integer ``version`` attribute, increased on every change of
    its records, gets its answers cached by the resolver until the version changes.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def lookup(self, qname: str, qtype: str) -> list[str] | None:
        """Return the record values for ``qname``/``qtype`` ("A", "AAAA", "PTR"), or None.

        For "A" and "AAAA", ``qname`` is lower-case and relative to the mesh domain
        (``alpha`` for ``alpha.tunnelmesh``, ``www.alpha`` for an alias) and the values are
        IP addresses. For "PTR", ``qname`` is an IP address in text form and the values are
        names relative to the mesh domain. Called on the event loop: it must not block.

        None means "not a name of mine"; an empty list means "my name, no such record".
        """


class Upstream(msgspec.Struct, frozen=True):
    """Where a proxy rule sends a request."""

    host: str
    port: int


class ProxyRule(abc.ABC):
    """Chooses the upstream for a request arriving at the reverse proxy (``tunnelmesh proxy``).

    The proxy builds one instance of every registered rule when it starts
    (:meth:`from_options`) and asks them in registration order, once per request; the first
    that returns an :class:`Upstream` wins. ``route`` runs on the proxy's hot path: keep it to a
    few dictionary look-ups and never block (no I/O, no DNS).
    """

    name: ClassVar[str]

    headers: ClassVar[frozenset[str]] = frozenset()
    """Lower-case names of the request headers :meth:`route` reads (``host`` included if used).

    Only these are decoded and handed to ``route``: the proxy does no work for the others.
    """

    private_headers: ClassVar[frozenset[str]] = frozenset()
    """Lower-case names of the routing headers that never leave the proxy.

    They are removed from the request sent upstream and from the response sent back.
    """

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ProxyRule | None:
        """Build the rule from the proxy's options; None leaves the rule out.

        Args:
            options: what the proxy was started with: ``upstream_host`` (str) and whatever the
                proxy's command line or the node adds (``peer_lookup``, ...). Unknown keys are
                ignored.
        """
        return cls()

    @abc.abstractmethod
    def route(self, headers: Mapping[str, str]) -> Upstream | None:
        """Return the upstream for a request, or None when the rule has no opinion.

        Args:
            headers: the first value of each header named in :attr:`headers` that the request
                carries, under its lower-case name, decoded as latin-1 (so every byte survives).

        Raises:
            ValueError: the rule recognises its header but the value is malformed; the proxy
                answers 400 with ``str(exc)`` as the plain-text body.
        """


# --- what hooks receive -----------------------------------------------------------------------


class CoordinatorView(Protocol):
    """The running coordinator as ``tunnelmesh_register_coordinator_routes`` hands it to a plugin.

    A plugin types its ``coordinator`` argument with this and uses nothing else of it; the
    coordinator (:class:`tunnelmesh.coordinator.Coordinator`) satisfies it (mypy checks that
    where the hook is called).
    """

    @property
    def config(self) -> ServerConfig:
        """The server configuration; a plugin's own section is ``config.sections[name]``."""

    @property
    def data_dir(self) -> Path:
        """The coordinator's state folder; a plugin keeps its files in a subfolder of it."""

    @property
    def domain(self) -> str:
        """The mesh's DNS domain."""

    @property
    def pm(self) -> Any:
        """The plugin manager (``build_registry(kind)``), or None in a bare test coordinator."""

    @property
    def ca(self) -> MeshCa | None:
        """The mesh CA, once the coordinator is loaded."""

    @property
    def store(self) -> StateStore:
        """The state store every coordinator of the mesh shares: a plugin keeps what must
        survive a restart or be seen by the other coordinators in its own document
        collections (``put_doc``/``load_docs``, collection names starting with its name)."""

    def seal(self, value: bytes, slot: str) -> bytes:
        """``value`` as it is stored when it is a secret: encrypted with the operator's
        ``state.encryption_key_file`` when one is configured (else as is); ``slot`` (where it
        is stored) binds it."""

    def unseal(self, blob: bytes, slot: str) -> bytes:
        """The value :meth:`seal` stored at ``slot``.

        Raises:
            ConfigError: it is encrypted and no key, or another key, is configured.
        """

    @property
    def peers(self) -> dict[str, PeerRecord]:
        """Registered peers by peer ID (read only: a plugin never writes the registry)."""

    def peer_by_name(self, name: str) -> PeerRecord | None:
        """The peer registered under ``name``, or None."""

    def own_mesh_ip(self) -> str | None:
        """The mesh IP of the coordinator's own peer (``join_mesh``), or None until it has one."""

    async def wait_own_mesh_ip(self) -> str:
        """Wait until the coordinator's own peer is registered; return its mesh IP."""

    @property
    def clients(self) -> ClientBook:
        """The clients of concentrator peers: a plugin that manages them (tunnelmesh_wg)
        adds, enables, disables and removes them through it; its routes decide who may."""

    def is_admin(self, rec: PeerRecord) -> bool:
        """Whether the peer ``rec`` is an admin now (``admin_peers``, see docs/security.md)."""

    def clock(self) -> float:
        """The coordinator's wall clock (unix seconds; tests set their own)."""


class NodeView(Protocol):
    """The running node as ``tunnelmesh_node_started`` and ``tunnelmesh_node_stopping`` hand it.

    :class:`tunnelmesh.node.node.Node` satisfies it (mypy checks that where the hooks are called).
    """

    @property
    def name(self) -> str:
        """This peer's name in the mesh."""

    @property
    def mesh_ip(self) -> str:
        """This peer's mesh IP address."""

    @property
    def config(self) -> PeerConfig:
        """The peer configuration; a plugin's own section is ``config.sections[name]``."""


class TransportHost(NodeView, Protocol):
    """What :meth:`Transport.from_node` may read of the node that builds its transports.

    :class:`tunnelmesh.node.node.Node` satisfies it (mypy checks that where transports are built).
    """

    @property
    def identity(self) -> Identity:
        """The node's ed25519 identity."""

    @property
    def x25519_private_key(self) -> bytes:
        """The node's WireGuard (X25519) private key, derived from its identity."""

    @property
    def listen_address(self) -> str:
        """``host:port`` the node's transports listen on (the configured port)."""

    @property
    def context(self) -> Context:
        """The mesh this node joined (coordinator URL, CA file)."""

    @property
    def client(self) -> ControlClient:
        """The node's control-plane client (its session with the coordinator)."""


class ConcentratorView(Protocol):
    """A WireGuard concentrator as the node shows it (``tunnelmesh_wg``)."""

    @property
    def endpoint(self) -> str:
        """``host:port`` its clients dial (published in the heartbeats)."""

    def describe(self) -> dict[str, Any]:
        """For ``node.status``: listen port, endpoint, clients (latest handshake, bytes)."""

    def status(self) -> dict[str, dict[str, Any]]:
        """Per served client ID: ``latest_handshake`` (unix seconds, 0 = never),
        ``rx_bytes``, ``tx_bytes``, ``endpoint`` (for the heartbeats)."""


@runtime_checkable
class ConcentratorHost(TransportHost, Protocol):
    """What a WireGuard concentrator (``tunnelmesh_wg``) uses of the node it serves clients on.

    :class:`tunnelmesh.node.node.Node` satisfies it; the plugin checks it with ``isinstance`` on
    the node ``tunnelmesh_node_started`` hands over.
    """

    @property
    def wg_clients(self) -> ClientRoutes | None:
        """The clients routed by this node, and the ones it serves (None before start)."""

    def attach_link(self, link: Link) -> None:
        """Carry the packets of route ``link.peer`` (a client) on ``link``; what the link
        receives goes to the forwarder."""

    def detach_link(self, name: str, link: Link | None) -> None:
        """Route ``name`` has no link any more (``link``: only if it is still that one)."""

    def set_concentrator(self, concentrator: ConcentratorView | None) -> None:
        """Report this concentrator in ``node.status`` and the heartbeats (None: no more)."""


@runtime_checkable
class StunProber(Protocol):
    """A transport that asks a STUN server for the reflexive address of its own socket (UDP).

    The node asks the first transport that is one (``isinstance``) after the network changed.
    """

    async def stun(
        self, host: str, port: int, *, timeout: float = 1.0, attempts: int = 3
    ) -> tuple[str, int] | None:
        """The address the STUN server saw this transport's socket at; None when none answered.

        Raises:
            TransportError: the transport is not listening.
        """


class ExitHost(TransportHost, Protocol):
    """What the node's exit service (:class:`tunnelmesh.exit.service.ExitService`) uses of it.

    :class:`tunnelmesh.node.node.Node` satisfies it (mypy checks that where the service starts).
    """

    @property
    def mesh_cidr(self) -> str:
        """The mesh's address range."""

    @property
    def routes(self) -> RoutingTable:
        """The routing table (the exit's default route is one of its entries)."""

    @property
    def forwarder(self) -> Forwarder | None:
        """The forwarder (the exit guard joins its filters), None before start."""

    @property
    def sync(self) -> PeerSync | None:
        """The peers as the node follows them, None before start."""

    @property
    def store(self) -> ContextStore:
        """Where :attr:`context` is saved (an exit's pinned key is kept there)."""

    def notify(self, line: str) -> None:
        """Report a human-readable progress line (``tunnelmesh join`` prints it)."""
