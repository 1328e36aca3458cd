"""Coordinator: what a registered peer asks, and its deletion (functions bound as methods of
:class:`~tunnelmesh.coordinator.core.Coordinator`).

A heartbeat (liveness, endpoints, aliases, a concentrator's clients; memory only, paced per
peer), a rendezvous relayed to another peer's push channel (paced per pair), a deletion.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tunnelmesh.control.messages import (
    Heartbeat,
    HeartbeatAck,
    PeerGone,
    Rendezvous,
    RendezvousAck,
    RendezvousRequest,
    encode,
)
from tunnelmesh.control.urls import endpoint_problem
from tunnelmesh.coordinator.failures import ApiFailure, _valid_endpoints, store_unavailable
from tunnelmesh.coordinator.policy import MAX_ALIASES, accepted_aliases
from tunnelmesh.coordinator.store import PeerRecord
from tunnelmesh.errors import StateStoreError

if TYPE_CHECKING:
    from tunnelmesh.coordinator.core import Coordinator

log = logging.getLogger("tunnelmesh.coordinator.core")
"""Coordinator's log: every part of it logs under the name it always had."""


def heartbeat(self: Coordinator, rec: PeerRecord, hb: Heartbeat, observed: str) -> HeartbeatAck:
    """Record a heartbeat; pushes the peer when its endpoints, exit flag or online state changed.

    Raises:
        ApiFailure: 429 when the peer heartbeats faster than its allowance (burst
            HEARTBEAT_BURST, then 4 per interval), 400 for an endpoint that is not a unicast
            IP:port (counted in ``stats``); nothing changes then.
    """
    now = self.clock()
    wait = self.heartbeat_pace.take(rec.peer_id, now)
    if wait > 0:
        self.stats["heartbeats_limited"] += 1
        raise ApiFailure(429, "rate_limited", "heartbeats too frequent; slow down", wait)
    try:
        endpoints = _valid_endpoints(hb.endpoints)
    except ApiFailure:
        self.stats["bad_endpoints"] += 1
        raise
    changed = endpoints != rec.endpoints or hb.allow_exit_traffic != rec.allow_exit_traffic
    served = hb.concentrator
    serving = ""
    if served is not None:
        why = endpoint_problem(served.endpoint, names=True) if served.endpoint else None
        if why is not None:
            self.stats["bad_endpoints"] += 1
            raise ApiFailure(
                400, "bad_endpoint", f"concentrator endpoint {served.endpoint!r} {why}"
            )
        serving = served.endpoint
        self.clients.report(rec.peer_id, served.clients)
    changed = changed or serving != rec.concentrator_endpoint
    rec.concentrator_endpoint = serving
    if hb.aliases != rec.alias_request:
        rec.alias_request = list(hb.aliases[:MAX_ALIASES])
        aliases = accepted_aliases(rec.alias_request, rec, self.peers.values())
        changed = changed or aliases != rec.aliases
        rec.aliases = aliases
    rec.endpoints = endpoints
    rec.allow_exit_traffic = hb.allow_exit_traffic
    rec.transports = dict(list(hb.transports.items())[:4096])
    rec.rtt_ms = dict(list(hb.rtt_ms.items())[:4096])
    rec.reasons = {k: v[:200] for k, v in list(hb.reasons.items())[:4096]}
    rec.counters = hb.counters
    rec.last_seen = now
    self.peerstats.heartbeat(rec.peer_id, hb, now)
    self._dirty.add(rec.peer_id)
    self.stats["heartbeats"] += 1
    if self.liveness.seen(rec.peer_id, now):
        self._announce(rec)  # back online: at once
    elif changed:
        self._announce_soon(rec)
    if changed:
        self._to_share.add(rec.peer_id)
    return HeartbeatAck(
        interval=float(self.config.heartbeat_interval), server_time=now, observed_addr=observed
    )


def rendezvous(self: Coordinator, rec: PeerRecord, req: RendezvousRequest) -> RendezvousAck:
    """Relay a hole-punch request to ``req.to`` over its push channel."""
    target = self.peer_by_name(req.to)
    if target is None or target.pending:
        raise ApiFailure(404, "no_such_peer", f"no peer named {req.to!r}")
    wait = self.rendezvous_pace.take(f"{rec.peer_id}>{target.peer_id}", self.clock())
    if wait > 0:
        self.stats["rendezvous_limited"] += 1
        raise ApiFailure(429, "rate_limited", f"too many rendezvous with {req.to!r}", wait)
    try:
        endpoints = _valid_endpoints(req.endpoints) or rec.endpoints
    except ApiFailure:
        self.stats["bad_endpoints"] += 1
        raise
    msg = Rendezvous(from_peer=rec.name, peer_id=rec.peer_id, endpoints=endpoints)
    delivered = self.hub.send_to(target.peer_id, encode(msg))
    return RendezvousAck(delivered=delivered, peer_endpoints=target.endpoints)


async def delete(self: Coordinator, rec: PeerRecord) -> None:
    """Remove a peer: frees its IP, tells every peer; its name stays reserved for its key."""
    async with self._lock:
        if self.peers.get(rec.peer_id) is not rec:
            return
        try:
            await self.store.delete_peer(rec.peer_id)
        except StateStoreError as exc:
            raise store_unavailable(exc) from None
        self._drop(rec)
        log.info("deleted peer %s (%s), freed %s", rec.name, rec.peer_id, rec.mesh_ip)


def _drop(self: Coordinator, rec: PeerRecord) -> None:
    """Forget a deleted peer (here or by another coordinator) and tell every peer."""
    self._unindex(rec)
    self._dirty.discard(rec.peer_id)
    self._pending_push.discard(rec.peer_id)
    self._to_share.discard(rec.peer_id)
    self.heartbeat_pace.forget(rec.peer_id)
    if self.alloc.contains(rec.mesh_ip):
        self.alloc.release(rec.mesh_ip)
    self.liveness.forget(rec.peer_id)
    self.peerstats.forget(rec.peer_id)
    self.revision += 1
    self.hub.broadcast(encode(PeerGone(peer_id=rec.peer_id, name=rec.name, revision=self.revision)))
