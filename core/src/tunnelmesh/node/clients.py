"""WireGuard clients in the node's data plane: routes on every node, the served set on their
concentrator.

The coordinator pushes every client of the mesh (``tunnelmesh_wg``: a phone with the WireGuard
app, its mesh IP, the peer ID of the concentrator that serves it), the whole list each time.
:class:`ClientRoutes` turns that list into routing-table entries
(:mod:`tunnelmesh.mesh.routing`):

* on the client's concentrator, ``set_peer(name, mesh_ips=[ip], client=True)``: the
  concentrator's engine gives the route its link (:meth:`ClientRoutes.subscribe` tells it which
  clients it serves), and the forwarder relays between the client and the mesh
  (``Forwarder.relay`` is on while there is one); a client whose record names an exit peer
  (``exit_peer``, ``--full-tunnel``) gets ``exit=<that peer's name>``: the forwarder relays its
  packets for outside the mesh to that exit and accepts the exit's answers for it (an exit that
  is this node itself needs nothing: the packets meet this node's exit guard and TUN);
* on every other node, ``set_peer(name, mesh_ips=[ip], via=<concentrator's name>)``: packets
  for the client go to the concentrator, and the client's address is accepted from the
  concentrator only.

A client is routed while it is ``active`` and not expired (``expires_at``, unix seconds, 0 =
never): expiry is checked here on a timer as well, so an expired client loses its routes (and
its concentrator drops it) at that moment, whether or not a push arrives. A client whose
concentrator this node does not know, or whose name is a peer's, gets no route.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from tunnelmesh.mesh.routing import RoutingTable

__all__ = ["ClientRecord", "ClientRoutes", "usable"]

log = logging.getLogger(__name__)


class ClientRecord(Protocol):
    """What the data plane reads of a pushed client (``tunnelmesh.control.messages.ClientInfo``)."""

    @property
    def client_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def public_key(self) -> str: ...
    @property
    def preshared_key(self) -> str: ...
    @property
    def mesh_ip(self) -> str: ...
    @property
    def concentrator(self) -> str: ...
    @property
    def active(self) -> bool: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def exit_peer(self) -> str: ...


def usable(client: ClientRecord, now: float) -> bool:
    """The client may send and receive: active, and not expired at ``now`` (unix seconds)."""
    return client.active and (not client.expires_at or now < client.expires_at)


class ClientRoutes:
    """Keeps the routing table's client entries in step with the pushed client list.

    Args:
        routes: the node's routing table.
        local_peer_id: this node's peer ID (its clients are served here).
        peer_name: the name a peer ID has in the mesh now (None: unknown).
        set_relay: called with whether this node serves a client now (the forwarder's
            ``relay`` flag).
        clock: unix time (tests pass their own).
    """

    def __init__(
        self,
        routes: RoutingTable,
        local_peer_id: str,
        peer_name: Callable[[str], str | None],
        *,
        set_relay: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routes = routes
        self.local_peer_id = local_peer_id
        self._peer_name = peer_name
        self._set_relay = set_relay
        self._clock = clock
        self.clients: tuple[ClientRecord, ...] = ()
        """The last pushed list (every client of the mesh)."""
        self.served: dict[str, ClientRecord] = {}
        """The usable clients this node serves, by name."""
        self._routed: set[str] = set()
        self._subscribers: list[Callable[[dict[str, ClientRecord]], None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def subscribe(self, callback: Callable[[dict[str, ClientRecord]], None]) -> None:
        """Call ``callback(served)`` after every change of the served set (the concentrator)."""
        self._subscribers.append(callback)

    def apply(self, clients: Sequence[ClientRecord] | None) -> None:
        """Take a new pushed list (None: none known yet) and bring the routes in step."""
        self.clients = tuple(clients or ())
        self.refresh()

    def refresh(self) -> None:
        """Bring the routes in step with the list, the peers' names and the clock (call after
        peer changes too: a concentrator that comes, goes or is renamed)."""
        now = self._clock()
        routes = self.routes
        # name -> (mesh_ip, via ("" = served here), exit route name ("" = none))
        wanted: dict[str, tuple[str, str, str]] = {}
        served: dict[str, ClientRecord] = {}
        next_expiry = 0.0
        for c in self.clients:
            if not usable(c, now) or not c.mesh_ip:
                continue
            if c.expires_at and (not next_expiry or c.expires_at < next_expiry):
                next_expiry = c.expires_at
            if c.concentrator == self.local_peer_id:
                via = ""
            else:
                via = self._peer_name(c.concentrator) or ""
                if not via:
                    continue  # its concentrator is not (or no longer) in the mesh
            existing = routes.peers.get(c.name)
            if existing is not None and c.name not in self._routed:
                log.warning("client %s: a peer has that name; not routed", c.name)
                continue
            exit = ""
            if not via and c.exit_peer and c.exit_peer != self.local_peer_id:
                # an exit not in the mesh (now): a name no route has ("?" is in no DNS label),
                # so the client's internet traffic is dropped, never sent out another way
                exit = self._peer_name(c.exit_peer) or f"?{c.exit_peer}"
            wanted[c.name] = (c.mesh_ip, via, exit)
            if not via:
                served[c.name] = c
        for name in self._routed - wanted.keys():
            routes.remove_peer(name)
        for name, (ip, via, exit) in wanted.items():
            route = routes.peers.get(name)
            if (
                route is None
                or route.mesh_ips != (f"{ip}/32",)
                or route.via != via
                or route.client != (not via)
                or route.exit != exit
            ):
                routes.set_peer(name, mesh_ips=[f"{ip}/32"], via=via, client=not via, exit=exit)
        self._routed = set(wanted)
        changed = served.keys() != self.served.keys() or any(
            served[n] is not self.served[n] for n in served
        )
        self.served = served
        if self._set_relay is not None:
            self._set_relay(bool(served))
        if changed:
            for callback in self._subscribers:
                callback(dict(served))
        self._arm(next_expiry, now)

    def _arm(self, at: float, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not at:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tests calling refresh by hand)
        self._timer = loop.call_later(max(0.0, at - now) + 0.01, self.refresh)

    def close(self) -> None:
        """Stop the expiry timer. Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
