"""What the coordinator learns from heartbeats beside the peer record: traffic history, the
transport order a node has in force, where a peer is (sans-IO: heartbeats and ``now`` in,
series out).

Location
    A peer's ``location: {lat, lon, city}`` (peer.yaml) travels in its heartbeats, checked by
    the API (:func:`~tunnelmesh.control.messages.location_problem`: a 400 otherwise). It is
    kept, in memory, only when server.yaml has ``locations: true`` (then ``GET
    /api/v1/status`` shows it); otherwise it is dropped on arrival.

Traffic history
    Each heartbeat carries the node's traffic totals (bytes sent and received since its daemon
    started). The difference to the previous heartbeat is spread over the time between the
    two and added to two rings per peer: the last hour in 10-second slots (360) and the last
    day in 5-minute slots (288). A slot keeps bytes (float32); its rate is bytes / slot length,
    the newest slot's bytes / the time it covers so far, so a chart moves with each heartbeat.
    Slots without heartbeats (a peer offline, a gap over 2 minutes) hold no data rather than
    zero. A counter that went down (the daemon restarted) starts a new baseline.

    Memory is fixed per peer: (360 + 288) slots x 2 directions x 4 bytes, about 5.2 KiB, so
    2,000 peers cost about 10 MiB; a deleted peer's rings are dropped. History lives in memory
    only: a coordinator restart starts it again.
"""

from __future__ import annotations

import math
from array import array

from tunnelmesh.control.messages import Heartbeat, Location

__all__ = ["COARSE", "FINE", "PeerStats", "Ring", "Traffic"]

MAX_GAP = 120.0
"""Seconds between two heartbeats beyond which their difference is not spread (unknown when
the bytes passed): the slots between hold no data."""

_NAN = float("nan")


class Ring:
    """Bytes received and sent per slot of ``step`` seconds, the last ``slots`` slots."""

    __slots__ = ("newest", "rx", "slots", "step", "tx")

    def __init__(self, step: float, slots: int) -> None:
        self.step = step
        self.slots = slots
        self.newest = -1  # absolute slot index (time // step) of the newest slot, -1 = none
        self.rx = array("f", [_NAN]) * slots
        self.tx = array("f", [_NAN]) * slots

    def _advance(self, slot: int) -> None:
        if slot <= self.newest:
            return
        start = max(self.newest + 1, slot - self.slots + 1)
        for s in range(start, slot):
            self.rx[s % self.slots] = _NAN  # no heartbeat covered these
            self.tx[s % self.slots] = _NAN
        self.rx[slot % self.slots] = 0.0
        self.tx[slot % self.slots] = 0.0
        self.newest = slot

    def add(self, t0: float, t1: float, rx: float, tx: float) -> None:
        """Spread ``rx``/``tx`` bytes evenly over ``[t0, t1]`` (``t1 > t0``)."""
        span = t1 - t0
        first, last = int(t0 // self.step), int(t1 // self.step)
        first = max(first, last - self.slots + 1, self.newest - self.slots + 1)
        for s in range(first, last + 1):
            lo, hi = max(t0, s * self.step), min(t1, (s + 1) * self.step)
            if hi <= lo:
                continue
            share = (hi - lo) / span
            self._advance(s)
            i = s % self.slots
            if math.isnan(self.rx[i]):
                self.rx[i] = self.tx[i] = 0.0
            self.rx[i] += rx * share
            self.tx[i] += tx * share

    def series(self, now: float, covered_until: float) -> list[tuple[float, float, float]]:
        """``(slot start, rx bytes/s, tx bytes/s)`` oldest first, slots with data only, within
        the ring's span before ``now``."""
        out: list[tuple[float, float, float]] = []
        if self.newest < 0:
            return out
        current = int(now // self.step)
        for s in range(
            max(self.newest - self.slots + 1, current - self.slots + 1), self.newest + 1
        ):
            i = s % self.slots
            rx, tx = self.rx[i], self.tx[i]
            if math.isnan(rx):
                continue
            start = s * self.step
            length = self.step
            if s == self.newest:
                length = min(self.step, max(1.0, covered_until - start))
            out.append((start, rx / length, tx / length))
        return out


FINE = (10.0, 360)
"""The hour ring: 10-second slots."""
COARSE = (300.0, 288)
"""The day ring: 5-minute slots."""


class Traffic:
    """One peer's traffic: the last totals, the last rates, the two rings."""

    __slots__ = ("coarse", "fine", "last_rx", "last_t", "last_tx", "rx_rate", "tx_rate")

    def __init__(self) -> None:
        self.last_t = 0.0
        self.last_rx = self.last_tx = 0
        self.rx_rate = self.tx_rate = 0.0
        self.fine = Ring(*FINE)
        self.coarse = Ring(*COARSE)

    def record(self, now: float, rx_total: int, tx_total: int) -> None:
        """Take a heartbeat's totals."""
        prev_t, prev_rx, prev_tx = self.last_t, self.last_rx, self.last_tx
        self.last_t, self.last_rx, self.last_tx = now, rx_total, tx_total
        if not prev_t or now <= prev_t:
            return
        if rx_total < prev_rx or tx_total < prev_tx or now - prev_t > MAX_GAP:
            self.rx_rate = self.tx_rate = 0.0  # a restarted daemon, or a gap: new baseline
            return
        rx, tx = rx_total - prev_rx, tx_total - prev_tx
        self.rx_rate, self.tx_rate = rx / (now - prev_t), tx / (now - prev_t)
        self.fine.add(prev_t, now, rx, tx)
        self.coarse.add(prev_t, now, rx, tx)

    def series(self, span: str, now: float) -> tuple[float, list[tuple[float, float, float]]]:
        """``(step, points)`` of the ``hour`` or the ``day`` ring."""
        ring = self.fine if span == "hour" else self.coarse
        return ring.step, ring.series(now, self.last_t)


class PeerStats:
    """Heartbeat observations of every peer, by peer ID.

    Args:
        locations: keep the locations peers report (server.yaml ``locations: true``);
            otherwise they are dropped on arrival.
    """

    def __init__(self, *, locations: bool = False) -> None:
        self.traffic: dict[str, Traffic] = {}
        self.transport_order: dict[str, list[str]] = {}
        """The order each node reports in force (its last heartbeat)."""
        self.keep_locations = locations
        self.location: dict[str, Location] = {}
        """Where each peer says it is (checked by the API: ``location_problem``)."""

    def heartbeat(self, peer_id: str, hb: Heartbeat, now: float) -> None:
        """Take what a (checked, accepted) heartbeat says."""
        traffic = self.traffic.get(peer_id)
        if traffic is None:
            traffic = self.traffic[peer_id] = Traffic()
        traffic.record(now, hb.counters.bytes_received, hb.counters.bytes_sent)
        self.transport_order[peer_id] = [n[:32] for n in hb.transport_order[:16]]
        if hb.location is not None and self.keep_locations:
            self.location[peer_id] = hb.location
        else:
            self.location.pop(peer_id, None)

    def forget(self, peer_id: str) -> None:
        """A deleted peer: drop what was kept for it."""
        self.traffic.pop(peer_id, None)
        self.transport_order.pop(peer_id, None)
        self.location.pop(peer_id, None)
