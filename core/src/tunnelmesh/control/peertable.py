"""Sans-IO peer table on the peer side: push-channel messages in, change events out.

The data plane consumes these events (add a route and a tunnel on :class:`PeerAdded`, re-dial
on new endpoints in :class:`PeerChanged`, tear down on :class:`PeerRemoved`, punch on
:class:`RendezvousRequested`). The table never includes this node itself.

A snapshot (first message of every push connection, including after the coordinator was away)
is diffed against what the table already holds, so a reconnect produces only the real changes:
peers the data plane already knows keep working while the coordinator is down, and the table
catches up when it comes back.

After the snapshot the coordinator sends deltas (one peer each), numbered: each carries the
revision after the snapshot's, one more than the one before. A delta whose revision is not
newer than the table's is a duplicate or arrived late and is ignored (an older record must not
overwrite a newer one); one that skips revisions means deltas were lost: it is applied (it is
that peer's newest record) and :attr:`PeerTable.needs_resync` asks the driver for a new snapshot
(it reconnects the push channel). Every connection starts again from its own snapshot, so the
revisions of different coordinators never have to agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tunnelmesh.control.messages import (
    ClientInfo,
    Clients,
    FilterRules,
    PeerGone,
    PeerInfo,
    PeerUpserted,
    PolicyRule,
    PushMessage,
    Rendezvous,
    Snapshot,
    TransportOrder,
)

__all__ = [
    "ClientsChanged",
    "FilterRulesChanged",
    "PeerAdded",
    "PeerChange",
    "PeerChanged",
    "PeerRemoved",
    "PeerTable",
    "RendezvousRequested",
    "SelfRemoved",
    "TransportOrderChanged",
]


@dataclass(frozen=True)
class PeerAdded:
    """A peer joined (or was learnt from a snapshot)."""

    peer: PeerInfo


@dataclass(frozen=True)
class PeerChanged:
    """A peer's name, endpoints, key, IP or online state changed."""

    peer: PeerInfo
    previous: PeerInfo


@dataclass(frozen=True)
class PeerRemoved:
    """A peer left the mesh."""

    peer: PeerInfo


@dataclass(frozen=True)
class RendezvousRequested:
    """``from_peer`` wants a direct path: send packets towards ``endpoints`` now."""

    from_peer: str
    peer_id: str
    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class SelfRemoved:
    """This node was deleted from the mesh (``tunnelmesh leave`` or an admin)."""

    name: str


@dataclass(frozen=True)
class FilterRulesChanged:
    """The coordinator's filter rules (the coordinator layer of the packet filter) changed."""

    rules: tuple[PolicyRule, ...]


@dataclass(frozen=True)
class TransportOrderChanged:
    """The transport order set for this node through the coordinator changed (empty: the
    node's own ``transports.order`` again)."""

    order: tuple[str, ...]


@dataclass(frozen=True)
class ClientsChanged:
    """The mesh's clients (hosts served by concentrator peers) changed: the whole list, as
    the coordinator sent it (inactive ones too; see :class:`ClientInfo.active`)."""

    clients: tuple[ClientInfo, ...]


PeerChange = (
    PeerAdded
    | PeerChanged
    | PeerRemoved
    | RendezvousRequested
    | SelfRemoved
    | FilterRulesChanged
    | TransportOrderChanged
    | ClientsChanged
)

# Fields whose change matters to the data plane or to `tunnelmesh peers`; counters do not.
_TRACKED = (
    "name",
    "public_key",
    "wg_public_key",
    "mesh_ip",
    "endpoints",
    "online",
    "is_coordinator",
    "allow_exit_traffic",
    "aliases",
    "concentrator_endpoint",
)


def _differs(a: PeerInfo, b: PeerInfo) -> bool:
    return any(getattr(a, f) != getattr(b, f) for f in _TRACKED)


class PeerTable:
    """The other peers of the mesh, by peer ID."""

    def __init__(
        self,
        self_id: str = "",
        peers: Iterable[PeerInfo] = (),
        filter_rules: Iterable[PolicyRule] | None = None,
    ) -> None:
        self.self_id = self_id
        self.peers: dict[str, PeerInfo] = {}
        self.me: PeerInfo | None = None
        self.revision = -1
        self.needs_resync = False
        """Deltas were missed (a gap in the revisions): the driver should get a new snapshot."""
        self.stale = 0
        """Deltas ignored because the table already had a newer revision."""
        self.filter_rules: tuple[PolicyRule, ...] | None = (
            None if filter_rules is None else tuple(filter_rules)
        )
        """The coordinator's filter rules; None until the coordinator (or a cache) told us."""
        self.transport_order: tuple[str, ...] = ()
        """The transport order set for this node through the coordinator (empty: none)."""
        self.clients: tuple[ClientInfo, ...] | None = None
        """The mesh's clients; None until the coordinator told us."""
        for p in peers:
            if p.peer_id != self_id:
                self.peers[p.peer_id] = p

    def by_name(self, name: str) -> PeerInfo | None:
        for p in self.peers.values():
            if p.name == name:
                return p
        return None

    def apply(self, msg: PushMessage) -> list[PeerChange]:
        """Apply one push message; return what changed."""
        if isinstance(msg, Snapshot):
            self.revision = msg.revision
            self.needs_resync = False
            return self._snapshot(msg.peers)
        if isinstance(msg, PeerUpserted | PeerGone) and not self._in_sequence(msg.revision):
            return []
        if isinstance(msg, PeerUpserted):
            return self._upsert(msg.peer)
        if isinstance(msg, PeerGone):
            if msg.peer_id == self.self_id:
                return [SelfRemoved(msg.name)]
            old = self.peers.pop(msg.peer_id, None)
            return [PeerRemoved(old)] if old is not None else []
        if isinstance(msg, Rendezvous):
            return [RendezvousRequested(msg.from_peer, msg.peer_id, tuple(msg.endpoints))]
        if isinstance(msg, FilterRules):
            rules = tuple(msg.rules)
            if rules == self.filter_rules:
                return []
            self.filter_rules = rules
            return [FilterRulesChanged(rules)]
        if isinstance(msg, TransportOrder):
            order = tuple(msg.order)
            if order == self.transport_order:
                return []
            self.transport_order = order
            return [TransportOrderChanged(order)]
        if isinstance(msg, Clients):
            clients = tuple(msg.clients)
            if clients == self.clients:
                return []
            self.clients = clients
            return [ClientsChanged(clients)]
        return []  # Coordinators: the client's business (where to connect), not the table's

    def _in_sequence(self, revision: int) -> bool:
        """Take ``revision`` as the table's; False when the delta is not newer (ignore it)."""
        if self.revision >= 0:
            if revision <= self.revision:
                self.stale += 1
                return False
            if revision > self.revision + 1:
                self.needs_resync = True
        self.revision = revision
        return True

    def _upsert(self, peer: PeerInfo) -> list[PeerChange]:
        if peer.peer_id == self.self_id:
            self.me = peer
            return []
        old = self.peers.get(peer.peer_id)
        self.peers[peer.peer_id] = peer
        if old is None:
            return [PeerAdded(peer)]
        if _differs(old, peer):
            return [PeerChanged(peer, old)]
        return []

    def _snapshot(self, peers: list[PeerInfo]) -> list[PeerChange]:
        seen: set[str] = set()
        changes: list[PeerChange] = []
        for p in peers:
            seen.add(p.peer_id)
            changes += self._upsert(p)
        for pid in [pid for pid in self.peers if pid not in seen]:
            changes.append(PeerRemoved(self.peers.pop(pid)))
        return changes
