"""The coordinator's metrics, read from :class:`~tunnelmesh.coordinator.Coordinator` at scrape
time (see docs/metrics.md). ``peer`` values are registered peer names (DNS labels);
``reason`` values are the coordinator's fixed error codes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import Metric

from tunnelmesh import __version__
from tunnelmesh.metrics.base import Family, FamilyCollector

__all__ = ["CoordinatorCollector"]


_LIMITS = (
    ("heartbeat_pace", "heartbeats_limited"),
    ("rendezvous_pace", "rendezvous_limited"),
    ("registration_pace", "registrations_limited"),
    ("bad_endpoint", "bad_endpoints"),
)
"""``limit`` label values and the coordinator's ``stats`` keys behind them."""


class CoordinatorCollector(FamilyCollector):
    """Reads a coordinator's counters, peer table and liveness when scraped."""

    FAMILIES = (
        Family("tunnelmesh_coordinator_info", "gauge", "This coordinator (value 1).", ("version",)),
        Family(
            "tunnelmesh_coordinator_registrations_total",
            "counter",
            "Registration attempts by result (registered, or refused with the error code).",
            ("result", "reason"),
        ),
        Family(
            "tunnelmesh_coordinator_denied_total",
            "counter",
            "Requests to other routes refused for their credential or role, by error code "
            "(unauthorized, token_not_credential, forbidden).",
            ("reason",),
        ),
        Family(
            "tunnelmesh_coordinator_heartbeats_total", "counter", "Heartbeats accepted from peers."
        ),
        Family(
            "tunnelmesh_coordinator_limited_total",
            "counter",
            "Requests a limit refused: heartbeats, rendezvous and registrations over their pace, "
            "endpoints that are not unicast IP:port.",
            ("limit",),
        ),
        Family(
            "tunnelmesh_coordinator_pushes_coalesced_total",
            "counter",
            "Peer changes that rode on a push already pending for that peer.",
        ),
        Family(
            "tunnelmesh_coordinator_peers",
            "gauge",
            "Registered peers by liveness (online: a heartbeat within 3 intervals).",
            ("state",),
        ),
        Family(
            "tunnelmesh_coordinator_peer_online",
            "gauge",
            "1 while the peer sends heartbeats, 0 once it missed 3.",
            ("peer",),
        ),
        Family(
            "tunnelmesh_coordinator_peer_last_seen_seconds",
            "gauge",
            "Unix time of the peer's last heartbeat or registration.",
            ("peer",),
        ),
        Family(
            "tunnelmesh_coordinator_push_channels",
            "gauge",
            "Peers with an open push channel (WebSocket).",
        ),
        Family(
            "tunnelmesh_coordinator_revision",
            "gauge",
            "The peer table's revision (grows with every change pushed).",
        ),
        Family(
            "tunnelmesh_coordinator_clients",
            "gauge",
            "Clients of concentrator peers (WireGuard phones, laptops) by state.",
            ("state",),
        ),
        Family(
            "tunnelmesh_coordinator_client_events_total",
            "counter",
            "Clients added, removed, and expired (pushed as inactive when the expiry passed).",
            ("event",),
        ),
        Family(
            "tunnelmesh_coordinator_client_refused_total",
            "counter",
            "Client requests refused, by error code (bad_key, bad_name, name_taken, ...).",
            ("reason",),
        ),
    )

    def __init__(self, coordinator: Any) -> None:
        self.coordinator = coordinator

    def samples(self) -> Iterable[Metric]:
        c, fam = self.coordinator, self.family
        info = fam("tunnelmesh_coordinator_info")
        info.add_metric([__version__], 1)
        yield info
        regs = fam("tunnelmesh_coordinator_registrations_total")
        regs.add_metric(["registered", ""], c.stats.get("registrations", 0))
        refused_by = dict(getattr(c, "refused_by", {}))
        for code, n in sorted(refused_by.items()):
            regs.add_metric(["refused", code], n)
        rest = c.stats.get("refused", 0) - sum(refused_by.values())
        if rest > 0:  # refusals counted before reasons were (none today)
            regs.add_metric(["refused", "other"], rest)
        yield regs
        denied = fam("tunnelmesh_coordinator_denied_total")
        for code, n in sorted(dict(getattr(c, "denied_by", {})).items()):
            denied.add_metric([code], n)
        yield denied
        hb = fam("tunnelmesh_coordinator_heartbeats_total")
        hb.add_metric([], c.stats.get("heartbeats", 0))
        yield hb
        limited = fam("tunnelmesh_coordinator_limited_total")
        for limit, key in _LIMITS:
            limited.add_metric([limit], c.stats.get(key, 0))
        yield limited
        coalesced = fam("tunnelmesh_coordinator_pushes_coalesced_total")
        coalesced.add_metric([], c.stats.get("pushes_coalesced", 0))
        yield coalesced
        peers = fam("tunnelmesh_coordinator_peers")
        online_m = fam("tunnelmesh_coordinator_peer_online")
        seen = fam("tunnelmesh_coordinator_peer_last_seen_seconds")
        counts = {"online": 0, "offline": 0}
        for rec in sorted(c.peers.values(), key=lambda r: r.name):
            up = c.liveness.is_online(rec.peer_id)
            counts["online" if up else "offline"] += 1
            online_m.add_metric([rec.name], 1.0 if up else 0.0)
            if rec.last_seen:
                seen.add_metric([rec.name], float(rec.last_seen))
        for state, n in counts.items():
            peers.add_metric([state], n)
        yield from (peers, online_m, seen)
        hub = getattr(c, "hub", None)
        if hub is not None:
            ch = fam("tunnelmesh_coordinator_push_channels")
            ch.add_metric([], len(hub))
            yield ch
        rev = fam("tunnelmesh_coordinator_revision")
        rev.add_metric([], c.revision)
        yield rev
        book = getattr(c, "clients", None)
        if book is not None:
            yield from self._clients(book, c.clock())

    def _clients(self, book: Any, now: float) -> Iterable[Metric]:
        states = {"active": 0, "disabled": 0, "expired": 0}
        for rec in book.records.values():
            if not rec.enabled:
                states["disabled"] += 1
            else:
                states["active" if book.active(rec, now) else "expired"] += 1
        gauge = self.family("tunnelmesh_coordinator_clients")
        for state, n in states.items():
            gauge.add_metric([state], n)
        yield gauge
        events = self.family("tunnelmesh_coordinator_client_events_total")
        for event in ("added", "removed", "expired"):
            events.add_metric([event], book.stats.get(event, 0))
        yield events
        refused = self.family("tunnelmesh_coordinator_client_refused_total")
        for code, n in sorted(book.refused_by.items()):
            refused.add_metric([code], n)
        yield refused
