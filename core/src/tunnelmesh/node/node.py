"""The mesh node: identity, control client, TUN, routing, forwarder, transports, DNS, filter.

What ``tunnelmesh join`` runs after registering::

    node = Node(config, context=ctx, store=store, identity=ident, pm=pm)
    await node.start()      # STUN, transports listening, TUN up, DNS and filter running
    await node.run()        # heartbeats + push channel until stop() / removal
    await node.aclose()     # hooks told, everything undone (the TUN device disappears)

Start-up order, and why:

1. the STUN-reflexive address is asked from the listen port (``transports.listen_port``)
   *before* a transport binds it (the mapping a NAT shows for that port is what peers will use);
2. every transport registered by a plugin (``tunnelmesh_register_transports``) is built and
   listens: ``cls.from_node(node)`` when the class has it, else the WireGuard-style constructor
   ``cls(x25519_private_key, listen="0.0.0.0:<listen_port>", mtu=<mtu>)``, in
   ``transports.order`` and then by each class's ``preference``;
3. the TUN device gets ``<mesh_ip>/<mesh prefix>``, so the whole mesh CIDR is routed into it;
4. the packet filter (:class:`~tunnelmesh.filter.FilterService`, with the ``filter.*``
   commands and ``node.status`` on the control socket), then the forwarder with the filter's
   engine and every other registered filter class;
5. the DNS resolver (:class:`~tunnelmesh.dns.DnsService`) when ``dns.enabled``;
6. :class:`~tunnelmesh.node.peers.PeerSync` follows the control client's change events (the
   cached peer list first, so a restart while the coordinator is down still reaches every
   known peer), then ``tunnelmesh_node_started(node)`` is called.

Heartbeats publish the node's endpoints (local addresses and the reflexive one) and, per peer,
the transport in use and traffic counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from tunnelmesh.abc import (
    ConcentratorHost,
    ConcentratorView,
    Link,
    PacketFilter,
    StunProber,
    Transport,
    TransportHost,
)
from tunnelmesh.aio.stopping import bounded_step, finish
from tunnelmesh.aio.wgsession import WireGuardLink
from tunnelmesh.config import PeerConfig
from tunnelmesh.control.client import ControlClient, PeerStatus
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.control.messages import (
    ClientStatus,
    ConcentratorStatus,
    Counters,
    RegisterResponse,
)
from tunnelmesh.errors import TunnelmeshError
from tunnelmesh.identity import Identity
from tunnelmesh.mesh.forwarder import Forwarder
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.node.clients import ClientRoutes
from tunnelmesh.node.endpoints import local_endpoints
from tunnelmesh.node.peers import PeerSync
from tunnelmesh.node.transportctl import TransportControl

__all__ = ["Node", "NodeError", "can_create_tun", "transport_order"]

log = logging.getLogger(__name__)


class NodeError(TunnelmeshError):
    """The node could not start (no permission for TUN, a port in use, ...)."""


def can_create_tun() -> str | None:
    """Why this process cannot create a TUN device, or None when it can."""
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (load the tun module, or give the container the device)"
    if os.geteuid() == 0:
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            caps = next(line for line in f if line.startswith("CapEff:"))
        if int(caps.split()[1], 16) & (1 << 12):  # CAP_NET_ADMIN
            return None
    except (OSError, StopIteration, ValueError):
        pass
    return "creating the TUN device needs root (or CAP_NET_ADMIN): run it with sudo"


def transport_order(configured: Sequence[str], classes: Mapping[str, type[Transport]]) -> list[str]:
    """The order a node builds (and prefers) its transports in: the installed ones that
    ``configured`` (``transports.order``) names, in its order, then the others by their own
    :attr:`~tunnelmesh.abc.Transport.preference` (lower first), equal ones by name."""
    names = [n for n in configured if n in classes]
    names += sorted(
        (n for n in classes if n not in names), key=lambda n: (classes[n].preference, n)
    )
    return names


class Node:
    """A running mesh node; see the module docstring.

    Args:
        config: the peer config (tun, transports, dns, filter, control_socket).
        context: the joined mesh (from ``tunnelmesh join``), with the session and mesh IP.
        store: where the context lives (updated on re-registration).
        identity: this node's key.
        pm: the plugin manager (transports, filters, node hooks); None: no plugins.
        client: a control client to use instead of building one (tests).
        notify: called with human-readable progress lines (``tunnelmesh join`` prints them).
        coordinator: this node is the coordinator's own peer (``join_mesh:``): its resolver
            answers ``this`` with its own mesh IP first.
    """

    def __init__(
        self,
        config: PeerConfig,
        *,
        context: Context,
        store: ContextStore,
        identity: Identity,
        pm: Any = None,
        client: ControlClient | None = None,
        notify: Callable[[str], None] | None = None,
        coordinator: bool = False,
    ) -> None:
        self.config = config
        self.coordinator = coordinator
        self.context = context
        self.store = store
        self.identity = identity
        self.pm = pm
        self.notify = notify or (lambda line: None)
        self._notify_given = notify is not None
        self.stopping = ""
        """The stop step under way; empty when not stopping."""
        self.name = context.peer_name
        self.mesh_ip = context.mesh_ip
        self.mesh_cidr = context.mesh_cidr or f"{context.mesh_ip}/32"
        self.routes = RoutingTable()
        self.transports: list[Transport] = []
        self.reflexive: list[str] = []
        self._stun_locals: list[str] = []
        self.tun: Any = None
        self.forwarder: Forwarder | None = None
        self.filter_service: Any = None
        self.dns: Any = None
        self.exit: Any = None
        self.control: Any = None
        self.sync: PeerSync | None = None
        self.transport_control: TransportControl | None = None
        self.wg_clients: ClientRoutes | None = None
        """The WireGuard clients this node routes (all) and serves (a concentrator's)."""
        self.concentrator: ConcentratorView | None = None
        self._client_dns: asyncio.Task[None] | None = None
        self.netmon: Any = None
        self.network_changes = 0
        """Debounced underlay changes handled so far."""
        self.started_at = 0.0
        self._started = False
        self._closed = False
        self.client = client or self._make_client()

    # --- pieces ----------------------------------------------------------------------------

    @property
    def x25519_private_key(self) -> bytes:
        """The node's static X25519 key (WireGuard), derived from its ed25519 identity."""
        return self.identity.x25519_private()

    @property
    def listen_port(self) -> int:
        """The port the transports listen on and the endpoints carry (``transports.listen_port``)."""
        return self.config.transports.listen_port

    @property
    def listen_address(self) -> str:
        """Where the transports listen: ``0.0.0.0:<transports.listen_port>``."""
        return f"0.0.0.0:{self.listen_port}"

    def _make_client(self) -> ControlClient:
        ctx = self.context
        try:
            ca_pem = Path(ctx.ca_path).read_text(encoding="ascii")
        except OSError as exc:
            raise TunnelmeshError(
                f"the pinned CA of context {ctx.name!r} is missing ({exc.strerror}); join again"
            ) from None
        client = ControlClient(
            server=ctx.server,
            identity=self.identity,
            ca_pem=ca_pem,
            name=ctx.peer_name,
            session_token=ctx.session_token,
            endpoints=self.endpoints,
            status=self.status,
            peers_cache=self.store.context_dir(ctx.name) / "peers.json",
        )
        client.on_register.append(self._remember)
        return client

    def _remember(self, reg: RegisterResponse) -> None:
        ctx = self.context
        ctx.stun_port = reg.stun_port
        ctx.session_token = reg.session_token
        ctx.peer_name = reg.name
        ctx.mesh_ip = reg.mesh_ip
        with contextlib.suppress(TunnelmeshError, OSError):
            self.store.put(ctx, activate=False)
        if reg.mesh_ip != self.mesh_ip:
            log.warning(
                "the coordinator gave this node a new mesh IP %s (was %s); restart to use it",
                reg.mesh_ip,
                self.mesh_ip,
            )

    def endpoints(self) -> list[str]:
        """What the heartbeats publish: local addresses, then the reflexive one.

        The reflexive address belongs to the network it was learned on: once the local
        addresses change (the node moved), it is no longer published.
        """
        if not self.transports:
            return []
        eps = local_endpoints(self.listen_port, exclude=[self.mesh_cidr])
        if self.reflexive and sorted(eps) != self._stun_locals:
            log.info("local addresses changed; no longer publishing %s", self.reflexive)
            self.reflexive = []
        return eps + [e for e in self.reflexive if e not in eps]

    def status(self) -> PeerStatus:
        """Per-peer transports and this node's traffic counters, for the heartbeats."""
        st = self.forwarder.stats if self.forwarder is not None else {}
        sync = self.sync
        transports = dict(sync.link_transport) if sync is not None else {}
        rtt = sync.rtt_ms() if sync is not None else {}
        reasons = sync.reasons() if sync is not None else {}
        dropped = sum(v for k, v in st.items() if k.startswith("dropped"))
        rx_bytes = tx_bytes = 0
        for t in self.transports:
            for rx, tx in t.traffic().values():
                rx_bytes += rx
                tx_bytes += tx
        return PeerStatus(
            transports=transports,
            rtt_ms=rtt,
            reasons=reasons,
            counters=Counters(
                bytes_sent=tx_bytes,
                bytes_received=rx_bytes,
                packets_sent=st.get("tx_packets", 0),
                packets_received=st.get("rx_packets", 0),
                dropped=dropped,
            ),
            allow_exit_traffic=self.config.allow_exit_traffic,
            aliases=list(self.config.dns.aliases),
            transport_order=list(sync.transport_order) if sync is not None else [],
            location=self.config.location,
            concentrator=self._concentrator_status(),
        )

    def _concentrator_status(self) -> ConcentratorStatus | None:
        conc = self.concentrator
        if conc is None:
            return None
        return ConcentratorStatus(
            endpoint=conc.endpoint,
            clients={cid: msgspec.convert(st, ClientStatus) for cid, st in conc.status().items()},
        )

    def describe(self) -> dict[str, Any]:
        """The ``node.status`` control command: this node, its transports and its peers."""
        peers = []
        traffic: dict[str, tuple[int, int]] = {}
        for t in self.transports:
            traffic.update(t.traffic())
        for name, route in sorted(self.routes.peers.items()):
            info = self.sync.peers.get(name) if self.sync is not None else None
            paths = self.sync.paths.get(name) if self.sync is not None else None
            wg_peer = route.link.wg_peer if isinstance(route.link, WireGuardLink) else None
            endpoint = wg_peer.endpoint if wg_peer is not None else None
            last = wg_peer.last_handshake if wg_peer is not None else None
            if wg_peer is not None:
                rx_bytes, tx_bytes = wg_peer.rx_bytes, wg_peer.tx_bytes
            else:  # a link no WireGuard engine seals (SSH): its transport's count
                rx_bytes, tx_bytes = traffic.get(name, (0, 0))
            peers.append(
                {
                    "name": name,
                    "mesh_ip": route.mesh_ips[0] if route.mesh_ips else "",
                    "endpoints": list(route.endpoints),
                    "online": bool(info.online) if info is not None else False,
                    "link": route.link is not None,
                    "transport": self.sync.link_transport.get(name, "")
                    if self.sync is not None
                    else "",
                    "endpoint": f"{endpoint[0]}:{endpoint[1]}" if endpoint else "",
                    "handshake": last is not None,
                    "rx_bytes": rx_bytes,
                    "tx_bytes": tx_bytes,
                    "reason": paths.reason if paths is not None else "",
                    "rtt_ms": paths.rtt_ms() if paths is not None else None,
                    "paths": paths.describe()["paths"] if paths is not None else {},
                    "order": paths.selector.order if paths is not None else [],
                }
            )
        return {
            "name": self.name,
            "mesh_ip": self.mesh_ip,
            "mesh_cidr": self.mesh_cidr,
            "tun": self.config.tun.name,
            "transports": [t.name for t in self.transports],
            "endpoints": self.endpoints(),
            "coordinator_reachable": self.client.reachable,
            "network_changes": self.network_changes,
            "uptime": time.monotonic() - self.started_at if self.started_at else 0.0,
            "forwarder": dict(self.forwarder.stats) if self.forwarder is not None else {},
            "peers": peers,
            "exit": self.exit.describe() if self.exit is not None else None,
            "concentrator": self.concentrator.describe() if self.concentrator else None,
        }

    # --- lifecycle -------------------------------------------------------------------------

    def _registry(self) -> Any:
        if self.pm is None:
            from tunnelmesh.registry import Registry

            return Registry()
        return self.pm.build_registry()

    def _build_transports(self, registry: Any) -> list[Transport]:
        classes: dict[str, type[Transport]] = registry.transports
        names = transport_order(self.config.transports.order, classes)
        out: list[Transport] = []
        host: TransportHost = self  # mypy: the node is what from_node may read
        for name in names:
            try:
                t = registry.transports[name].from_node(host)
            except TypeError as exc:
                log.warning("transport %s cannot be built for a node (%s); skipped", name, exc)
                continue
            out.append(t)
        return out

    def _filters(self, registry: Any) -> list[PacketFilter]:
        filters: list[PacketFilter] = []
        if self.filter_service is not None:
            filters.append(self.filter_service.engine)
        engine_cls = type(filters[0]) if filters else None
        for name, cls in sorted(registry.filters.items()):
            if cls is engine_cls:
                continue
            try:
                filters.append(cls())
            except TypeError as exc:
                log.warning("filter %s cannot be built without arguments (%s); skipped", name, exc)
        return filters

    async def _stun_server(self) -> tuple[str, int] | None:
        host = urlsplit(self.context.server).hostname or ""
        if not (self.context.stun_port and host and self.listen_port):
            return None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
            return str(infos[0][4][0]), self.context.stun_port
        except (OSError, IndexError):
            return None

    async def _stun(self) -> None:
        """Learn the reflexive address of the listen port, over UDP (before any transport binds
        it)."""
        from tunnelmesh.control.daemon import stun_query

        server = await self._stun_server()
        if server is None:
            return
        locals_before = sorted(local_endpoints(self.listen_port, exclude=[self.mesh_cidr]))
        mapped = await stun_query(server[0], server[1], local_port=self.listen_port)
        if mapped is not None:
            self.reflexive = [f"{mapped[0]}:{mapped[1]}"]
            self._stun_locals = locals_before

    async def _network_changed(self) -> None:
        """Netlink saw the underlay change (debounced): re-learn the endpoints, tell the
        coordinator, re-check every path."""
        eps = local_endpoints(self.listen_port, exclude=[self.mesh_cidr])
        self.network_changes += 1
        self.notify(f"network changed: local endpoints {', '.join(eps) or '-'}")
        self.endpoints()  # drops a reflexive address learnt on the old network
        self.client.network_changed()
        for transport in self.transports:
            try:
                transport.network_changed()
            except Exception:
                log.exception("transport %s: network_changed failed", transport.name)
        if self.sync is not None:
            self.sync.network_changed()
        if self.exit is not None:
            await self.exit.network_changed()  # an exit's own LAN prefixes may have changed
        # the reflexive address, asked from the UDP transport's own socket
        udp = next((t for t in self.transports if isinstance(t, StunProber)), None)
        server = await self._stun_server() if udp is not None else None
        if udp is None or server is None:
            return
        try:
            mapped = await udp.stun(server[0], server[1], timeout=0.5, attempts=3)
        except TunnelmeshError:
            return
        if mapped is not None:
            self.reflexive = [f"{mapped[0]}:{mapped[1]}"]
            self._stun_locals = sorted(eps)
            self.client.heartbeat_now()

    async def start(self) -> None:
        """Bring the data plane up; see the module docstring for the order.

        Raises:
            NodeError: TUN or a transport could not be set up (everything started is undone).
        """
        from tunnelmesh.tun import TunDevice, TunError

        if self._started:
            return
        self._started = True
        self.started_at = time.monotonic()
        registry = self._registry()
        try:
            await self._stun()
            self.transports = self._build_transports(registry)
            prefix = ipaddress.ip_network(self.mesh_cidr, strict=False).prefixlen
            try:
                self.tun = await asyncio.to_thread(
                    TunDevice.create,
                    self.config.tun.name,
                    address=f"{self.mesh_ip}/{prefix}",
                    mtu=self.config.tun.mtu,
                    vnet_hdr=True,
                )
            except TunError as exc:
                raise NodeError(str(exc)) from None
            await self._start_filter()
            self.forwarder = Forwarder(
                self.tun.fileno(),
                self.routes,
                self._filters(registry),
                vnet_hdr=True,
                mesh_cidr=self.mesh_cidr,
            )
            routes = self.routes
            self.sync = PeerSync(
                routes,
                self.transports,
                lambda link: routes.set_link(link.peer, link),
                exclude=[self.mesh_cidr],
                rendezvous=self._ask_rendezvous,
                notify=self.notify,
                local_key=self.identity.public_raw,
                deliver=self.forwarder.deliver,
                probes_in_deliver=True,
                local_ip=self.mesh_ip,
                transport_order=[t.name for t in self.transports],
                per_peer=self.config.transports.per_peer,
            )
            self.forwarder.probe_sink = self.sync.probes_received
            for t in self.transports:
                try:
                    await t.listen(functools.partial(self._on_link, t))
                except TunnelmeshError as exc:
                    raise NodeError(f"transport {t.name}: {exc}") from None
            self.forwarder.start()
            await self._start_dns()
            if self.dns is not None:
                self.sync.dns = self.dns.backend
                self._follow_client_names(self.dns.backend)
            from tunnelmesh.node.exit import ExitService

            self.exit = ExitService(self)  # exit / exit-node client; see node/exit.py
            await self.exit.start()
            from tunnelmesh.control.peertable import PeerAdded

            for peer in list(self.client.table.peers.values()):
                self.sync.apply(PeerAdded(peer))
            self.client.add_callback(self.sync.apply)
            self._follow_clients()
            self._follow_filter_rules()
            self.transport_control = TransportControl(self.sync, self.client, self.notify)
            self.transport_control.start()  # the order set through the coordinator
            from tunnelmesh.netmon import NetworkMonitor

            self.netmon = NetworkMonitor(
                self._network_changed,
                ignore_links=[self.config.tun.name],
                ignore_networks=[self.mesh_cidr],
                debounce=0.3,
                max_delay=1.5,
            )
            await self.netmon.start()
        except BaseException:
            await self.aclose()
            raise
        tun_addr = f"{self.mesh_ip}/{prefix}"
        names = ", ".join(t.name for t in self.transports)
        self.notify(
            f"node up: {self.config.tun.name} {tun_addr}; transports: {names or 'none'} "
            f"(port {self.listen_port}); endpoints: {', '.join(self.endpoints()) or '-'}"
        )
        if self.pm is not None:
            view: ConcentratorHost = self  # mypy: the node is what the hooks may use
            self.pm.hook.tunnelmesh_node_started(node=view)

    def _on_link(self, transport: Transport, link: Link) -> None:
        if self.sync is not None:
            self.sync.on_link(transport, link)

    def _follow_clients(self) -> None:
        """Route the mesh's WireGuard clients (:mod:`tunnelmesh.node.clients`): to their
        concentrator, or, on the concentrator, to the engine that serves them. Peer changes
        re-check them (a concentrator that comes, goes or is renamed)."""
        forwarder = self.forwarder
        assert forwarder is not None

        def set_relay(on: bool) -> None:
            forwarder.relay = on

        from tunnelmesh.control.peertable import ClientsChanged, PeerChange

        clients = self.wg_clients = ClientRoutes(
            self.routes, self.identity.peer_id, self._peer_name, set_relay=set_relay
        )
        clients.apply(self.client.table.clients)  # the cached list first

        def follow(change: PeerChange) -> None:
            if isinstance(change, ClientsChanged):
                clients.apply(change.clients)
            else:
                clients.refresh()

        self.client.add_callback(follow)

    def attach_link(self, link: Link) -> None:
        """Carry route ``link.peer``'s packets on ``link`` (a concentrator's client link)."""
        if self.forwarder is not None:
            self.forwarder.attach(link)

    def detach_link(self, name: str, link: Link | None) -> None:
        """Route ``name`` loses its link (``link``: only while it is still that one)."""
        route = self.routes.peers.get(name)
        if route is not None and (link is None or route.link is link):
            self.routes.set_link(name, None)

    def set_concentrator(self, concentrator: ConcentratorView | None) -> None:
        """The WireGuard concentrator running on this node (``tunnelmesh_wg``), or None.

        A concentrator's resolver also answers on ``<mesh IP>:53``: the DNS server its clients
        are given (their queries arrive through the TUN device like any peer's)."""
        self.concentrator = concentrator
        if concentrator is not None and self.dns is not None and self._client_dns is None:
            self._client_dns = asyncio.get_running_loop().create_task(self._serve_client_dns())

    async def _serve_client_dns(self) -> None:
        assert self.dns is not None
        address = f"{self.mesh_ip}:53"
        try:
            await self.dns.serve_also(address)
        except TunnelmeshError as exc:
            log.warning("DNS for WireGuard clients not served on %s: %s", address, exc)
            self.notify(f"warning: DNS for WireGuard clients not served on {address}: {exc}")
            return
        self.notify(f"DNS for WireGuard clients on {address}")

    async def _ask_rendezvous(self, peer: str) -> None:
        await self.client.rendezvous(peer, self.endpoints())

    async def _start_filter(self) -> None:
        from tunnelmesh.control_socket import ControlError, ControlServer
        from tunnelmesh.filter import FilterService

        self.filter_service = FilterService.from_config(self.config.filter, local_name=self.name)
        self.filter_service.follow_peers(self._source_name)  # before the first packet
        path = self.config.control_socket
        if not path:
            await self.filter_service.start()
            return
        server = ControlServer(path)
        server.add_handler("node.status", lambda payload: self.describe())
        server.add_handler("node.set_order", self._set_order)
        self.filter_service.register(server)
        try:
            await server.start()
        except (ControlError, OSError) as exc:
            raise NodeError(f"control socket {path}: {exc}") from None
        self.control = server
        await self.filter_service.start()

    def _peer_name(self, peer_id: str) -> str | None:
        """The name the key ``peer_id`` has in the peer table now (None: not in the mesh)."""
        info = self.client.table.peers.get(peer_id)
        return info.name if info is not None else None

    def _source_name(self, peer_id: str) -> str | None:
        """The name of the peer or WireGuard client with ID ``peer_id`` now (None: neither):
        the filter's rules name a source by ID, and a client is a source like a peer."""
        name = self._peer_name(peer_id)
        if name is None:
            for c in self.client.table.clients or ():
                if c.client_id == peer_id:
                    return c.name
        return name

    def _follow_filter_rules(self) -> None:
        """The coordinator layer of the filter follows the coordinator's pushes (starting from
        the cached rules, so a restart while the coordinator is away keeps enforcing them).

        The coordinator names a rule's source peer by its peer ID; the forwarder knows peers
        by name, so each such rule is applied to the name that key has now, and re-applied
        when peers come, go or rename: a peer that takes a name with another key never gets
        the rules of the name's former key. peer.yaml rules whose source is a peer ID follow
        the peer changes the same way."""
        from tunnelmesh.control.peertable import FilterRulesChanged, PeerChange

        table = self.client.table
        peer_name = self._source_name

        def apply(change: PeerChange | None) -> None:
            if self.filter_service is None:
                return
            self.filter_service.follow_peers(peer_name)  # peer.yaml rules by peer ID
            rules = table.filter_rules
            if rules is None:
                return
            if isinstance(change, FilterRulesChanged):
                self.notify(f"coordinator filter rules: {len(rules)}")
            elif not any(r.source_peer for r in rules):
                return  # a peer change matters only to rules about a source peer
            self.filter_service.set_coordinator_rules(rules, peer_name)

        apply(None)
        self.client.add_callback(apply)

    def _set_order(self, payload: Any) -> dict[str, Any]:
        """``node.set_order {"order": [...], "peer": name|null}``: the transport order, globally
        or for one peer (empty order with a peer: back to the global one). The admin UI's API."""
        if self.sync is None:
            raise NodeError("the node is not running")
        payload = payload if isinstance(payload, dict) else {}
        order = payload.get("order") or []
        peer = payload.get("peer") or None
        if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
            raise NodeError("order must be a list of transport names")
        try:
            self.sync.set_order(order, peer)
        except ValueError as exc:
            raise NodeError(str(exc)) from None
        return {
            "order": self.sync.transport_order,
            "per_peer": dict(self.sync.per_peer),
        }

    def set_transport_order(self, order: list[str] | None, peer: str | None = None) -> None:
        """Change the transport order at run time (globally, or for one peer).

        Raises:
            ValueError: unknown transport names, or an empty global order.
        """
        if self.sync is None:
            raise NodeError("the node is not running")
        self.sync.set_order(order, peer)

    def _follow_client_names(self, backend: Any) -> None:
        """``<client>.<domain>`` answers each active concentrator client's mesh IP (the
        coordinator's client list, as pushed; an expiry is pushed when it passes)."""
        from tunnelmesh.control.peertable import ClientsChanged, PeerChange

        if self.client.table.clients is not None:
            backend.set_clients(self.client.table.clients)

        def apply(change: PeerChange) -> None:
            if isinstance(change, ClientsChanged):
                backend.set_clients(change.clients)

        self.client.add_callback(apply)

    async def _start_dns(self) -> None:
        if not self.config.dns.enabled:
            return
        from tunnelmesh.dns import DnsService

        dns = DnsService.from_config(
            self.config.dns,
            link=self.config.tun.name,
            networks=[self.mesh_cidr],
            local_name=self.name,
        )
        dns.backend.set(self.name, [self.mesh_ip], coordinator=self.coordinator)
        for alias in self.config.dns.aliases:
            dns.backend.set(alias, [self.mesh_ip])
        try:
            await dns.start()
        except (OSError, TunnelmeshError) as exc:
            log.warning("DNS resolver not started: %s", exc)
            self.notify(f"warning: DNS resolver not started: {exc}")
            return
        self.dns = dns

    async def run(self, stop: asyncio.Event | None = None, duration: float | None = None) -> None:
        """Heartbeat and follow the push channel until ``stop``, ``duration`` or removal.

        Raises:
            TunnelmeshError: this node was removed, or the coordinator refuses it.
        """
        stop = stop or asyncio.Event()
        runner = asyncio.create_task(self.client.run(), name="tm-control")
        waiter = asyncio.create_task(stop.wait(), name="tm-stop")
        try:
            done, _ = await asyncio.wait(
                {runner, waiter}, timeout=duration, return_when=asyncio.FIRST_COMPLETED
            )
            if runner in done:
                runner.result()
        finally:
            for t in (runner, waiter):
                t.cancel()
            await bounded_step("the control loop", finish(runner, waiter), report=self._report_stop)

    async def aclose(self) -> None:
        """Stop everything that was started, in reverse order. Idempotent.

        Every step is bounded (:func:`~tunnelmesh.aio.stopping.bounded_step`): a slow one is
        named in a "stopping: waiting for ..." line after 2 s and left behind after 4 s, so
        the steps after it (routes, the system resolver, the TUN device) are still undone.
        """
        if self._closed:
            return
        self._closed = True
        if self.pm is not None and self.forwarder is not None:
            try:
                self.pm.hook.tunnelmesh_node_stopping(node=self)
            except Exception:
                log.exception("a tunnelmesh_node_stopping hook failed")
        steps: list[tuple[str, Any]] = []
        if self.netmon is not None:  # first: undoing the exit routes is no network change
            steps.append(("the network monitor", self.netmon.aclose))
        if self.exit is not None:
            steps.append(("the exit node (routes, NAT)", self.exit.aclose))
        if self.transport_control is not None:
            self.transport_control.close()
        if self.sync is not None:
            steps.append(("the peer sync", self.sync.aclose))
        if self.wg_clients is not None:
            steps.append(("the client routes", _as_async(self.wg_clients.close)))
        if self.forwarder is not None:
            steps.append(("the forwarder", _as_async(self.forwarder.stop)))
        for t in reversed(self.transports):
            steps.append((f"the {t.name} transport", t.aclose))
        if self._client_dns is not None:
            self._client_dns.cancel()
        if self.dns is not None:
            steps.append(("the DNS resolver", self.dns.aclose))
        if self.filter_service is not None:
            steps.append(("the packet filter", self.filter_service.aclose))
        if self.control is not None:
            steps.append(("the control socket", self.control.aclose))
        if self.tun is not None:
            steps.append(("the TUN device", _as_async(self.tun.close)))
        steps.append(("the coordinator client", self.client.aclose))
        for what, close in steps:
            self.stopping = what
            await bounded_step(what, close(), report=self._report_stop)
        self.stopping = ""

    def _report_stop(self, line: str) -> None:
        if self._notify_given:
            self.notify(line)
        else:
            log.warning("%s", line)


def _as_async(fn: Callable[[], object]) -> Callable[[], Any]:
    async def run() -> None:
        fn()

    return run
