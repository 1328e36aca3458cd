"""Exit nodes in the running node: the exit's forwarding and masquerade, the client's routes.

:class:`ExitService` is what :class:`~tunnelmesh.node.Node` starts (after the forwarder and the
peer sync exist) and stops first. It uses the operating-system pieces of
:mod:`tunnelmesh.exit.system`:

On every node
    *Crash recovery*: routes a crashed client left (``proto 211``) are flushed, and forwarding
    and NAT a crashed exit left are undone from its state file, before anything else.
    *The guard* (:class:`ExitGuard`, the forwarder's first filter): a packet from a peer whose
    destination is outside the mesh is dropped and counted (``dropped_not_exit``) unless this
    node allows exit traffic, so a node never forwards for others by accident.

On an exit (``allow_exit_traffic: true`` / ``--allow-exit-traffic``)
    :class:`~tunnelmesh.exit.system.ExitGateway` (``ip_forward``, an nftables forward chain that
    passes only clients' traffic from the TUN device to the uplink, never to private or LAN
    destinations unless ``exit.allow_lan``, and a masquerade of the mesh CIDR) while the node
    runs. With ``exit.allowed_peers`` (peer IDs, and WireGuard clients' IDs: a
    ``--full-tunnel`` client of a concentrator is allowed by its own ID, not its
    concentrator's) only those are clients: the guard drops
    the others' packets for outside the mesh (by the key-authenticated link they came from),
    and the forward chain passes only their mesh IPs (kept up to date as peers change); the heartbeats publish ``allow_exit_traffic`` so clients
    (and ``tunnelmesh peers``) know. Packets from a client to the internet pass the guard, are
    written to the TUN device, and the kernel forwards and masquerades them; the replies come
    back to the TUN device addressed to the client's mesh IP and are routed to the client.

On a client (``exit_node: NAME`` / ``--exit-node NAME``)
    Once the peer NAME is known and publishes ``allow_exit_traffic``: the exit peer's routing
    table entry gets ``0.0.0.0/0`` (so the forwarder sends it what is not for a mesh address,
    and accepts replies from outside addresses from it only), then
    :class:`~tunnelmesh.exit.system.ExitRoutes` adds ``/32`` bypass routes for the coordinator
    and every peer's underlay endpoints (so the mesh never routes itself into the tunnel) and
    ``0.0.0.0/1`` + ``128.0.0.0/1`` into the TUN device. Mesh addresses keep their own
    (host) entries, so mesh traffic stays direct. Bypasses follow the peers' endpoints.
    A peer that does not allow exit traffic is refused with an error line; its routes are
    never installed (and removed if it stops allowing). Everything is undone on stop.

The state of the ``ip_forward`` sysctl is kept in ``<control_socket>.state/exit-gateway.json``
(``/run/tunnelmesh.sock.state/`` by default: on tmpfs, so a reboot forgets it with the
settings it describes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import re
import socket
import threading
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from tunnelmesh.abc import ExitHost, PacketFilter
from tunnelmesh.control.messages import PeerInfo
from tunnelmesh.errors import TunnelmeshError
from tunnelmesh.exit.system import ExitGateway, ExitNodeError, ExitRoutes, Runner, run_command
from tunnelmesh.mesh.routing import PeerRoute

__all__ = ["DEFAULT_ROUTE", "ExitGuard", "ExitService", "bypass_addresses"]

log = logging.getLogger(__name__)

DEFAULT_ROUTE = "0.0.0.0/0"
PEER_ID = re.compile(r"[0-9a-f]{16}")


class ExitGuard(PacketFilter):
    """Drops inbound packets for outside the mesh unless this node is an exit.

    Args:
        mesh_cidr: the mesh network; destinations inside it always pass.
        allow: this node allows exit traffic (everything passes).
        stats: a counter mapping; drops are added to ``dropped_not_exit``.
    """

    name: ClassVar[str] = "exit-guard"

    def __init__(
        self,
        mesh_cidr: str,
        *,
        allow: bool = False,
        clients: set[str] | None = None,
        stats: MutableMapping[str, int] | None = None,
    ) -> None:
        net = ipaddress.ip_network(mesh_cidr, strict=False)
        self.version = net.version
        self.offset = 16 if net.version == 4 else 24  # where the destination address starts
        self.size = 4 if net.version == 4 else 16
        self.prefix = net.network_address.packed[: net.prefixlen // 8]
        self.net = int(net.network_address)
        self.mask = int(net.netmask)
        self.whole_bytes = net.prefixlen % 8 == 0
        self.allow = allow
        self.clients = clients
        """On an exit: the peers (names, as the forwarder's links are keyed) whose traffic
        for outside the mesh passes; None: every peer."""
        self.stats: MutableMapping[str, int] = stats if stats is not None else {}
        self._warned: set[str] = set()

    def inside(self, pkt: bytes) -> bool:
        """Whether the packet's destination is a mesh address."""
        start, size = self.offset, self.size
        if len(pkt) < start + size or pkt[0] >> 4 != self.version:
            return False
        if self.whole_bytes:
            return pkt[start : start + len(self.prefix)] == self.prefix
        return int.from_bytes(pkt[start : start + size], "big") & self.mask == self.net

    def verdicts(self, packets: Sequence[Any], peer: str, inbound: bool) -> list[bool]:
        if not inbound or (self.allow and (self.clients is None or peer in self.clients)):
            return [True] * len(packets)
        if self.whole_bytes and self.version == 4:  # the usual case, inlined (hot path)
            pre, end = self.prefix, 16 + len(self.prefix)
            out = [p[16:end] == pre and p[0] >> 4 == 4 for p in packets]
        else:
            inside = self.inside
            out = [inside(p) for p in packets]
        dropped = out.count(False)
        if dropped:
            self.stats["dropped_not_exit"] = self.stats.get("dropped_not_exit", 0) + dropped
            if peer not in self._warned:
                self._warned.add(peer)
                if self.allow:
                    log.warning(
                        "peer %s sends traffic for outside the mesh, but is not in "
                        "exit.allowed_peers: dropped",
                        peer,
                    )
                else:
                    log.warning(
                        "peer %s sends traffic for outside the mesh, but this node is not an "
                        "exit (allow_exit_traffic / --allow-exit-traffic): dropped",
                        peer,
                    )
        return out


def bypass_addresses(
    endpoints: Sequence[str], *, mesh_cidr: str, extra: Sequence[str] = ()
) -> list[str]:
    """The IPv4 underlay hosts of ``endpoints`` (``ip:port``) and ``extra``, for bypass routes.

    Addresses inside the mesh, loopback, link-local, multicast and unspecified ones are left
    out (they never take the default route); the order is kept, duplicates removed.
    """
    mesh = ipaddress.ip_network(mesh_cidr, strict=False)
    out: dict[str, None] = {}
    for item in [*extra, *endpoints]:
        host = item.rsplit(":", 1)[0] if item.count(":") == 1 else item
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            continue
        if ip.version != 4 or ip in mesh:
            continue
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            continue
        out[str(ip)] = None
    return list(out)


class ExitService:
    """Exit and exit-client behaviour of a node; see the module docstring.

    Args:
        node: the node (its config, routes, forwarder, peer sync, control client, context and
            its store, notify), as :class:`tunnelmesh.abc.ExitHost`.
        run: command runner for ``ip``/``nft`` (tests).
        proc_sys: the ``/proc/sys`` directory (tests).
        state_dir: where the exit keeps the previous ``ip_forward`` (default: next to the
            control socket, see the module docstring).
        coordinator_ips: the coordinator's addresses to bypass (default: resolved from the
            context's server URL at start).
    """

    def __init__(
        self,
        node: ExitHost,
        *,
        run: Runner = run_command,
        proc_sys: str = "/proc/sys",
        state_dir: str | Path | None = None,
        coordinator_ips: Sequence[str] | None = None,
    ) -> None:
        cfg = node.config
        self.node = node
        self.allow = bool(cfg.allow_exit_traffic)
        self.exit_name = cfg.exit_node
        if self.exit_name and self.exit_name == node.name:
            raise TunnelmeshError(f"exit_node {self.exit_name!r} is this node itself")
        self.by_id = bool(PEER_ID.fullmatch(self.exit_name))
        """``exit_node`` was given as a peer ID: the exit is that key, whatever its name."""
        pins = node.context.exit_pins
        self.pin_id: str | None = self.exit_name if self.by_id else pins.get(self.exit_name)
        """The exit's peer ID: given, or pinned the first time the name was resolved."""
        self.impostor: PeerInfo | None = None
        """A peer that has the exit's name but not its pinned key (refused)."""
        self._route_name = ""
        self.mesh_cidr = str(ipaddress.ip_network(node.mesh_cidr, strict=False))
        if state_dir is None:
            sock = cfg.control_socket or "/run/tunnelmesh.sock"
            state_dir = Path(str(sock) + ".state")
        self.allowed_ids: list[str] | None = list(cfg.exit.allowed_peers) or None
        """``exit.allowed_peers`` as peer IDs; None: every peer may use this exit."""
        self.gateway = ExitGateway(
            self.mesh_cidr,
            tun=cfg.tun.name,
            clients=None if self.allowed_ids is None else [],
            allow_lan=cfg.exit.allow_lan,
            state_dir=state_dir,
            proc_sys=proc_sys,
            run=run,
        )
        self.routes = ExitRoutes(cfg.tun.name, run=run)
        self.guard = ExitGuard(
            self.mesh_cidr, allow=self.allow, clients=None if self.allowed_ids is None else set()
        )
        self._clients_wake = asyncio.Event()
        self._clients_task: asyncio.Task[None] | None = None
        self.coordinator_ips = list(coordinator_ips) if coordinator_ips is not None else None
        self.state = "off"
        """``off`` (no exit wanted), ``missing`` (not in the mesh), ``refused``, ``routed``."""
        self.exit_allowed = False
        self._lock = threading.Lock()  # ExitRoutes/ExitGateway run in worker threads
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._last_error = ""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover, install the guard, set up the exit, start following the exit peer.

        Raises:
            TunnelmeshError: the exit could not be set up (nftables or the sysctl failed).
        """
        self._started = True
        await asyncio.to_thread(self._recover)
        forwarder = self.node.forwarder
        if forwarder is not None:
            self.guard.stats = forwarder.stats
            forwarder.filters.insert(0, self.guard)
        if self.allow:
            if self.allowed_ids is not None:
                self.gateway.set_clients(self._refresh_clients())  # not applied yet: no nft
            try:
                await asyncio.to_thread(self._locked, self.gateway.apply)
            except ExitNodeError as exc:
                raise TunnelmeshError(f"allow_exit_traffic: {exc}") from None
            who = (
                f"{self.mesh_cidr}"
                if self.allowed_ids is None
                else f"{len(self.allowed_ids)} allowed peers (exit.allowed_peers)"
            )
            lan = "" if self.gateway.allow_lan else "; not to private or LAN addresses"
            self.node.notify(f"exit node: forwarding and masquerading traffic from {who}{lan}")
            if self.allowed_ids is not None:
                self.node.client.add_callback(lambda change: self._clients_wake.set())
                self._clients_task = asyncio.get_running_loop().create_task(
                    self._follow_clients(), name="tm-exit-clients"
                )
        if self.exit_name:
            if self.coordinator_ips is None:
                self.coordinator_ips = await self._resolve_coordinator()
            self.node.routes.subscribe(self._on_route)
            self.node.client.add_callback(self._on_change)
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="tm-exit")
            self._wake.set()

    async def aclose(self) -> None:
        """Remove routes, forwarding and NAT. Idempotent; errors are logged."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        for task in (self._task, self._clients_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.exit_name:
            await asyncio.to_thread(self._quiet, self.routes.restore)
            self.exit_allowed = False
            self._sync_route()
        if self.allow:
            await asyncio.to_thread(self._quiet, self.gateway.restore)

    def _locked(self, fn: Any) -> Any:
        with self._lock:
            return fn()

    def _quiet(self, fn: Any) -> None:
        with self._lock:
            try:
                fn()
            except (ExitNodeError, OSError) as exc:
                log.warning("exit cleanup: %s", exc)

    def _recover(self) -> None:
        """Undo what a crashed run left (routes with ``proto 211``, the exit's NAT)."""
        self._quiet(self.routes.recover)
        if self.gateway.state.exists():
            log.info("undoing the exit settings of a previous run (%s)", self.gateway.state)
            self._quiet(self.gateway.recover)

    async def _resolve_coordinator(self) -> list[str]:
        host = urlsplit(self.node.context.server).hostname or ""
        if not host:
            return []
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET)
        except OSError as exc:
            log.warning("cannot resolve the coordinator %s for the exit bypass: %s", host, exc)
            return []
        return list(dict.fromkeys(str(i[4][0]) for i in infos))

    async def network_changed(self) -> None:
        """The host's addresses changed: an exit re-reads its own LAN prefixes (dropped
        destinations unless ``exit.allow_lan``)."""
        if not self.allow or self._closed or not self.gateway.applied:
            return
        try:
            changed = await asyncio.to_thread(self._locked, self.gateway.refresh_lan)
        except ExitNodeError as exc:
            log.warning("exit: cannot update the blocked LAN prefixes: %s", exc)
            return
        if changed:
            log.info(
                "exit: LAN prefixes changed; not forwarding to %s", ", ".join(self.gateway.blocked)
            )

    # --- the exit side: allowed clients -------------------------------------------------------

    def _known_peers(self) -> list[PeerInfo]:
        sync = self.node.sync
        if sync is not None and sync.peers:
            return list(sync.peers.values())
        return list(self.node.client.table.peers.values())

    def _refresh_clients(self) -> list[str]:
        """Point the guard at the allowed peers' names; return their mesh IPs (for the
        gateway). A peer is allowed by its key (peer ID), whatever its name."""
        allowed = set(self.allowed_ids or ())
        peers = [p for p in self._known_peers() if p.peer_id in allowed]
        # WireGuard clients (tunnelmesh_wg) are allowed by their own client ID, never through
        # their concentrator's: listing a concentrator does not let its clients out
        clients = [
            c for c in (self.node.client.table.clients or ()) if c.client_id in allowed and c.active
        ]
        self.guard.clients = {p.name for p in peers} | {c.name for c in clients}
        return sorted({p.mesh_ip for p in peers if p.mesh_ip} | {c.mesh_ip for c in clients})

    async def _follow_clients(self) -> None:
        while not self._closed:
            await self._clients_wake.wait()
            self._clients_wake.clear()
            ips = self._refresh_clients()
            try:
                await asyncio.to_thread(
                    self._locked, functools.partial(self.gateway.set_clients, ips)
                )
            except ExitNodeError as exc:
                log.warning("exit: cannot update the allowed clients: %s", exc)
                await asyncio.sleep(2.0)
                self._clients_wake.set()

    # --- the client side ---------------------------------------------------------------------

    def _peer_named(self, name: str) -> PeerInfo | None:
        sync = self.node.sync
        if name == "this":  # the coordinator's own peer (join_mesh:), as this.tm names it
            peers = sync.peers.values() if sync is not None else ()
            found = next((p for p in peers if p.is_coordinator), None)
            if found is None:
                table = self.node.client.table.peers.values()
                found = next((p for p in table if p.is_coordinator), None)
            return found
        if sync is not None and name in sync.peers:
            return sync.peers[name]
        return self.node.client.table.by_name(name)

    def _peer_with_id(self, peer_id: str) -> PeerInfo | None:
        sync = self.node.sync
        for p in sync.peers.values() if sync is not None else ():
            if p.peer_id == peer_id:
                return p
        return self.node.client.table.peers.get(peer_id)

    def _pin(self, peer: PeerInfo) -> None:
        """Remember the exit's key for its name (in the context: a restart keeps it)."""
        self.pin_id = peer.peer_id
        ctx = self.node.context
        ctx.exit_pins[self.exit_name] = peer.peer_id
        try:
            self.node.store.put(ctx, activate=False)
        except (TunnelmeshError, OSError) as exc:
            log.warning("cannot save the exit node's key in the context: %s", exc)
        self.node.notify(
            f"exit node {self.exit_name!r} pinned to its key (peer ID {peer.peer_id}): another "
            "key under that name will be refused"
        )

    def _exit_peer(self) -> PeerInfo | None:
        """The exit (the pinned key, whatever its name now), or None. Pins a name at its first
        resolution; notes a peer that holds the name with another key in :attr:`impostor`."""
        named = None if self.by_id else self._peer_named(self.exit_name)
        if self.pin_id is None:
            if named is not None:
                self._pin(named)
            self.impostor = None
            return named
        self.impostor = named if named is not None and named.peer_id != self.pin_id else None
        return self._peer_with_id(self.pin_id)

    def _on_change(self, change: object) -> None:
        self._wake.set()

    def _on_route(self, route: PeerRoute) -> None:
        if route.name in (self.exit_name, self._route_name):
            self._sync_route()
            self._wake.set()

    def _is_pinned(self, name: str) -> bool:
        peer = self._peer_named(name)
        return peer is not None and self.pin_id is not None and peer.peer_id == self.pin_id

    def _sync_route(self) -> None:
        """The exit peer's routing-table entry has ``0.0.0.0/0`` exactly while it is allowed,
        and only when the entry's peer is the pinned key (never a peer posing under its name)."""
        table = self.node.routes
        for name in dict.fromkeys((self._route_name, self.exit_name)):
            route = table.peers.get(name) if name else None
            if route is None:
                continue
            want = self.exit_allowed and name == self._route_name and self._is_pinned(name)
            if (DEFAULT_ROUTE in route.mesh_ips) == want:
                continue
            ips = [ip for ip in route.mesh_ips if ip != DEFAULT_ROUTE]
            if want:
                ips.append(DEFAULT_ROUTE)
            table.set_peer(
                route.name, public_key=route.public_key, mesh_ips=ips, endpoints=route.endpoints
            )

    def wanted_bypass(self) -> list[str]:
        """The coordinator's and every peer's underlay addresses."""
        endpoints: list[str] = []
        sync = self.node.sync
        peers = sync.peers.values() if sync is not None else self.node.client.table.peers.values()
        for p in peers:
            endpoints += list(p.endpoints)
        for route in self.node.routes.peers.values():
            endpoints += list(route.endpoints)
        return bypass_addresses(
            endpoints, mesh_cidr=self.mesh_cidr, extra=self.coordinator_ips or []
        )

    async def _follow(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._reconcile()
            except (ExitNodeError, OSError) as exc:
                log.warning("exit routes: %s", exc)
                if str(exc) != self._last_error:
                    self._last_error = str(exc)
                    self.node.notify(f"error: exit routes via {self.exit_name}: {exc}")
                await asyncio.sleep(2.0)
                self._wake.set()

    async def _reconcile(self) -> None:
        if self.node.client.table.revision < 0 and self._peer_named(self.exit_name) is None:
            return  # no peer list from the coordinator yet (a fresh join): wait for it
        peer = self._exit_peer()
        name = self.exit_name
        if peer is None or not peer.allow_exit_traffic:
            state = "missing" if peer is None else "refused"
            other = self.impostor.peer_id if self.impostor is not None else ""
            if peer is None and self.impostor is not None:
                state = "wrong_key"
            if self.routes.applied:
                await asyncio.to_thread(self._locked, self.routes.restore)
            self.exit_allowed = False
            self._sync_route()
            if state != self.state:
                self.state = state
                if state == "wrong_key":
                    self.node.notify(
                        f"error: exit node {name!r} now has another key (peer ID {other}); "
                        f"this client pinned {self.pin_id} when it first used that name, so a "
                        "peer may be posing as the exit: refused, internet traffic is not "
                        "routed through it. If the exit really has a new key, use "
                        f"--exit-node {other}"
                    )
                elif state == "missing":
                    self.node.notify(
                        f"warning: exit node {name!r} is not in the mesh (yet); internet "
                        "traffic is not routed through it"
                    )
                else:
                    self.node.notify(
                        f"error: exit node {name!r} does not allow exit traffic (start it with "
                        "--allow-exit-traffic); internet traffic is not routed through it"
                    )
            return
        self.exit_allowed = True
        self._route_name = peer.name
        self._sync_route()
        bypass = self.wanted_bypass()
        if not self.routes.applied:
            self.routes.set_bypass(bypass)
            await asyncio.to_thread(self._locked, self.routes.apply)
        elif sorted(bypass) != sorted(self.routes.wanted):
            await asyncio.to_thread(self._locked, lambda: self.routes.set_bypass(bypass))
        if self.state != "routed":
            self.state = "routed"
            self.node.notify(
                f"exit node: internet traffic via {peer.name} ({peer.mesh_ip}); bypassing "
                f"{', '.join(self.routes.bypass) or 'nothing'}"
            )

    def describe(self) -> dict[str, Any]:
        """For ``node.status``."""
        return {
            "allow_exit_traffic": self.allow,
            "allowed_peers": self.allowed_ids,
            "allow_lan": self.gateway.allow_lan,
            "clients": sorted(self.guard.clients) if self.guard.clients is not None else None,
            "exit_node": self.exit_name,
            "exit_peer_id": self.pin_id or "",
            "state": self.state,
            "bypass": sorted(self.routes.bypass),
            "dropped_not_exit": int(self.guard.stats.get("dropped_not_exit", 0)),
        }
