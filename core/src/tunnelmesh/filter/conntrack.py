"""The connection tracking table: which flows exist, who opened them, and until when.

Keys are seen from this peer: ``(proto, local_addr, local_port, remote_addr, remote_port)``
with raw address bytes. For ICMP echo both ports hold the echo identifier.

An entry remembers:

* ``origin``: ``OUT`` when this peer opened the flow (its replies pass inbound whatever the
  rules say), ``IN`` when a remote peer opened it and the rules let it in.
* ``peer``: the mesh peer the flow goes through; a packet from another peer does not match.
* ``verdict`` and ``gen``: for ``IN`` flows, the rules' answer and the rule-table generation it
  was computed at. When the rules change, the next packet of the flow re-asks them, so a deny
  added at run time also cuts flows already open (their packets are dropped both ways while
  the denied entry lives, so the flow cannot come back as if we had opened it).
* ``deadline``: when it expires; each packet pushes it forward by the timeout of its state.

Timeouts (seconds, :class:`Timeouts`): TCP opening 60, established 3600, closing (FIN) 120,
reset 10; UDP 30 until a reply is seen, then 120; ICMP echo 30.

The table is bounded (``max_entries``). When full, expired entries near the oldest end are
swept; when none is expired, the oldest entry is evicted (counted in ``evicted``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnelmesh.filter.rules import Counter

__all__ = ["IN", "OUT", "Conntrack", "Entry", "Timeouts"]

OUT = 0
IN = 1

# TCP states
SYN = 0
ESTABLISHED = 1
CLOSING = 2

_SWEEP = 64  # entries looked at per eviction


@dataclass(frozen=True)
class Timeouts:
    """How long a flow lives without packets, by state, in seconds."""

    tcp_opening: float = 60.0
    tcp_established: float = 3600.0
    tcp_closing: float = 120.0
    tcp_reset: float = 10.0
    udp: float = 30.0
    udp_replied: float = 120.0
    icmp: float = 30.0


Key = tuple[int, bytes, int, bytes, int]


class Entry:
    """One tracked flow; see the module docstring."""

    __slots__ = ("counter", "deadline", "gen", "origin", "peer", "replied", "state", "verdict")

    def __init__(
        self,
        origin: int,
        peer: str,
        deadline: float,
        *,
        state: int = SYN,
        verdict: bool = True,
        gen: int = 0,
        counter: Counter | None = None,
    ) -> None:
        self.origin = origin
        self.peer = peer
        self.deadline = deadline
        self.state = state
        self.replied = False
        self.verdict = verdict
        self.gen = gen
        self.counter = counter


class Conntrack:
    """A bounded dict of :class:`Entry` by key, oldest first."""

    def __init__(self, max_entries: int = 65536, timeouts: Timeouts | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.timeouts = timeouts or Timeouts()
        self.entries: dict[Key, Entry] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: Key, now: float) -> Entry | None:
        """The live entry of ``key``; an expired one is removed and None returned."""
        entry = self.entries.get(key)
        if entry is not None and entry.deadline <= now:
            del self.entries[key]
            return None
        return entry

    def add(self, key: Key, entry: Entry, now: float) -> None:
        entries = self.entries
        if key not in entries and len(entries) >= self.max_entries:
            self._make_room(now)
        entries[key] = entry

    def _make_room(self, now: float) -> None:
        entries = self.entries
        stale = []
        for i, (key, entry) in enumerate(entries.items()):
            if i >= _SWEEP:
                break
            if entry.deadline <= now:
                stale.append(key)
        if stale:
            for key in stale:
                del entries[key]
            return
        del entries[next(iter(entries))]
        self.evicted += 1

    def expire(self, now: float) -> int:
        """Remove every expired entry; return how many."""
        stale = [k for k, e in self.entries.items() if e.deadline <= now]
        for key in stale:
            del self.entries[key]
        return len(stale)

    def clear(self) -> None:
        self.entries.clear()
