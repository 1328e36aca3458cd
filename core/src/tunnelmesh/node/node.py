"""The mesh node: identity, control client, TUN, routing, forwarder, transports, DNS, filter.

What ``tunnelmesh join`` runs after registering::

    node = Node(config, context=ctx, store=store, identity=ident, pm=pm)
    await node.start()      # STUN, transports listening, TUN up, DNS and filter running
    await node.run()        # heartbeats + push channel until stop() / removal
    await node.aclose()     # hooks told, everything undone (the TUN device disappears)

Start-up order, and why:

1. every transport registered by a plugin (``tunnelmesh_register_transports``) is built (it
   listens once the forwarder is up): ``cls.from_node(node)`` when the class has it, else the
   WireGuard-style constructor ``cls(x25519_private_key, listen="0.0.0.0:<listen_port>",
   mtu=<mtu>)``, in ``transports.order`` and then by each class's ``preference``;
2. when one of them punches NATs (``capabilities.nat_punch``: UDP), the STUN-reflexive address
   is asked from the listen port (``transports.listen_port``) *before* a transport binds it (the
   mapping a NAT shows for that port is what peers will use);
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

Where the code lives, by what it does (each module's functions take the node as ``self`` and
are bound in the class body, so they are found on :class:`Node` as before):

* this module -- :class:`Node`: its pieces, start and stop, the transports, forwarder and
  control socket (``node.status``, ``node.set_order``, the filter's commands);
* :mod:`tunnelmesh.node.report` -- what it reports: the heartbeats' status, ``node.status``;
* :mod:`tunnelmesh.node.underlay` -- the network under the mesh: STUN, network changes;
* :mod:`tunnelmesh.node.services` -- the resolver, the mesh's WireGuard clients, the
  coordinator's filter rules it follows.

Every part logs as ``tunnelmesh.node.node``, the logger this module always had.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tunnelmesh.abc import (
    ConcentratorHost,
    ConcentratorView,
    Link,
    PacketFilter,
    Transport,
    TransportHost,
)
from tunnelmesh.aio.stopping import bounded_step, finish
from tunnelmesh.config import PeerConfig
from tunnelmesh.control.client import ControlClient
from tunnelmesh.control.contexts import Context, ContextStore
from tunnelmesh.control.messages import RegisterResponse
from tunnelmesh.errors import TunnelmeshError
from tunnelmesh.identity import Identity
from tunnelmesh.mesh.forwarder import Forwarder
from tunnelmesh.mesh.routing import RoutingTable
from tunnelmesh.node import report, services, underlay
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
            self.transports = self._build_transports(registry)
            await self._stun()
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
            from tunnelmesh.exit.service import ExitService

            self.exit = ExitService(self)  # exit / exit-node client; see tunnelmesh/exit/service.py
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

    def attach_link(self, link: Link) -> None:
        """Carry route ``link.peer``'s packets on ``link`` (a concentrator's client link)."""
        if self.forwarder is not None:
            self.forwarder.attach(link)

    def detach_link(self, name: str, link: Link | None) -> None:
        """Route ``name`` loses its link (``link``: only while it is still that one)."""
        route = self.routes.peers.get(name)
        if route is not None and (link is None or route.link is link):
            self.routes.set_link(name, None)

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

    # --- the parts written in other modules (functions bound here as methods: found on the
    # class as before, at the cost of a method written here) ---------------------------------

    # what the node reports: heartbeats' status, node.status (report.py)
    status = report.status
    _concentrator_status = report._concentrator_status
    describe = report.describe

    # the network under the mesh: STUN, network changes (underlay.py)
    _stun_server = underlay._stun_server
    _stun = underlay._stun
    _network_changed = underlay._network_changed

    # the resolver, WireGuard clients, the coordinator's filter rules (services.py)
    _follow_clients = services._follow_clients
    set_concentrator = services.set_concentrator
    _serve_client_dns = services._serve_client_dns
    _peer_name = services._peer_name
    _source_name = services._source_name
    _follow_filter_rules = services._follow_filter_rules
    _follow_client_names = services._follow_client_names
    _start_dns = services._start_dns


def _as_async(fn: Callable[[], object]) -> Callable[[], Any]:
    async def run() -> None:
        fn()

    return run
