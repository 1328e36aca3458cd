"""Sans-IO peer liveness: which peers are online, from heartbeats and an explicit ``now``.

Theory of operation: a peer is *online* from a heartbeat (or registration) until
``misses * interval`` seconds pass without another one; then it is *offline* until the next
heartbeat. ``seen()`` and ``poll()`` return the transitions as events, so the coordinator can
push them to every peer. The driver calls ``poll(now)`` at ``next_deadline()`` (or simply once a
second); nothing here reads a clock.

    unknown --seen--> online --(no heartbeat for misses*interval)--> offline --seen--> online
       any  --forget--> unknown

The deadline heap holds one live entry per online peer (``_scheduled`` says which): a heartbeat
only moves ``last_seen``, and an entry that comes due early is pushed back to the peer's real
deadline. So a peer that heartbeats a thousand times a second costs one entry, not a thousand.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

__all__ = ["Liveness", "PeerOffline", "PeerOnline"]


@dataclass(frozen=True)
class PeerOnline:
    """A peer that was offline (or unknown) sent a heartbeat."""

    peer_id: str


@dataclass(frozen=True)
class PeerOffline:
    """A peer missed ``misses`` heartbeats in a row."""

    peer_id: str
    last_seen: float


@dataclass
class Liveness:
    """Online/offline state of every peer.

    Args:
        interval: the heartbeat interval peers are told to use (seconds).
        misses: how many intervals without a heartbeat make a peer offline.
    """

    interval: float = 10.0
    misses: int = 3
    _last_seen: dict[str, float] = field(default_factory=dict, repr=False)
    _online: set[str] = field(default_factory=set, repr=False)
    _heap: list[tuple[float, str]] = field(default_factory=list, repr=False)
    _scheduled: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def timeout(self) -> float:
        return self.interval * self.misses

    def restore(self, peer_id: str, last_seen: float, now: float) -> None:
        """Load a stored ``last_seen`` (coordinator start); online if it is recent enough."""
        self._last_seen[peer_id] = last_seen
        if last_seen + self.timeout > now:
            self._online.add(peer_id)
            self._schedule(peer_id, last_seen + self.timeout)
        else:
            self._online.discard(peer_id)
            self._scheduled.pop(peer_id, None)

    def observe(self, peer_id: str, last_seen: float, now: float) -> list[PeerOnline]:
        """A heartbeat's time learned second-hand (another coordinator stored it): a recent
        one is a heartbeat (``seen``); an expired one only moves ``last_seen``. It never takes
        a peer offline by itself: ``poll`` does, at the peer's deadline, so every way a peer
        goes offline passes the same place (and the caller's decision when to poll)."""
        if last_seen + self.timeout > now:
            return self.seen(peer_id, last_seen)
        self._last_seen[peer_id] = last_seen
        if peer_id in self._online and peer_id not in self._scheduled:
            self._schedule(peer_id, last_seen + self.timeout)
        return []

    def seen(self, peer_id: str, now: float) -> list[PeerOnline]:
        """A heartbeat from ``peer_id``; returns ``[PeerOnline]`` if it was not online."""
        self._last_seen[peer_id] = now
        if peer_id not in self._scheduled:
            self._schedule(peer_id, now + self.timeout)
        if peer_id in self._online:
            return []
        self._online.add(peer_id)
        return [PeerOnline(peer_id)]

    def forget(self, peer_id: str) -> None:
        """The peer left the mesh; no events for it any more."""
        self._last_seen.pop(peer_id, None)
        self._online.discard(peer_id)
        self._scheduled.pop(peer_id, None)  # its heap entry is stale from now on

    def _schedule(self, peer_id: str, deadline: float) -> None:
        self._scheduled[peer_id] = deadline
        heapq.heappush(self._heap, (deadline, peer_id))

    def _due(self, deadline: float, peer_id: str) -> float | None:
        """The real deadline of the heap entry ``(deadline, peer_id)``, or None if stale."""
        if self._scheduled.get(peer_id) != deadline or peer_id not in self._online:
            return None
        last = self._last_seen.get(peer_id)
        return None if last is None else last + self.timeout

    def poll(self, now: float) -> list[PeerOffline]:
        """Events for peers whose heartbeats stopped before ``now``."""
        events: list[PeerOffline] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, peer_id = heapq.heappop(self._heap)
            due = self._due(deadline, peer_id)
            if due is None:
                continue
            del self._scheduled[peer_id]
            if due <= now:
                self._online.discard(peer_id)
                events.append(PeerOffline(peer_id, self._last_seen[peer_id]))
            else:
                self._schedule(peer_id, due)  # heartbeats moved it: back in at the real one
        return events

    def next_deadline(self) -> float | None:
        """When ``poll`` may next produce an event (None: no peer is online)."""
        while self._heap:
            deadline, peer_id = self._heap[0]
            due = self._due(deadline, peer_id)
            if due is None:
                heapq.heappop(self._heap)
            elif due > deadline:
                heapq.heappop(self._heap)
                self._schedule(peer_id, due)
            else:
                return deadline
        return None

    def heap_size(self) -> int:
        """Entries in the deadline heap, live and stale (tests check that it stays bounded)."""
        return len(self._heap)

    def is_online(self, peer_id: str) -> bool:
        return peer_id in self._online

    def last_seen(self, peer_id: str) -> float | None:
        return self._last_seen.get(peer_id)
