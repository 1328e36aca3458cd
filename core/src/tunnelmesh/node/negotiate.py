"""Path selection for one peer, sans-IO: which transport carries its packets, and why.

Theory of operation
-------------------
A :class:`PathSelector` holds one :class:`Path` per transport, in the configured order of
preference (default ``udp``, ``ssh``, ``relay``; globally and per peer, changeable at run time
with :meth:`PathSelector.set_order`). It never touches a socket or a clock: the driver
(:mod:`tunnelmesh.node.paths`) feeds it what happened, with an explicit ``now``, and carries
out what it asks for (:meth:`PathSelector.next_action`), re-arming one timer at
:meth:`PathSelector.get_timer`.

Inputs: a link came up (dialled or incoming) or went down, a dial failed, a probe was
answered, the order changed, a rendezvous asks for a dial now. Outputs: :class:`Dial` (try to
open a link on a transport), :class:`Probe` (send one probe on a path's link), and
:class:`Switched` (the active path changed, with the reason, for logs and ``tunnelmesh
peers``).

States of a path::

    IDLE ──dial──▶ DIALING ──link up──▶ UP ──link down──▶ WAIT ──retry time──▶ DIALING
                      └──dial failed──▶ WAIT

Quality. Every UP path is probed (the active one and those preferred to it every
``probe_interval``, the others every ``standby_probe_interval``); a probe not answered within
``probe_timeout`` counts as lost. Over the last ``window`` resolved probes a path has a loss
rate and a median RTT. A path is

* *broken* when nothing came back for ``dead_after`` seconds although at least
  ``dead_probes`` probes went unanswered (fallback is then immediate);
* *lossy* when its loss reaches ``loss_leave`` (at least ``min_samples`` resolved probes);
* *slow* when its RTT exceeds ``rtt_leave_factor`` x another good path's RTT + ``rtt_margin``;
* *good* when at least ``min_samples`` probes were resolved and the whole window holds no
  loss (at most ``loss_return``): a path that lost probes must be clean for a whole window.

Rules (in :meth:`PathSelector._evaluate`, run after every input and timer):

1. No active path: the first UP path in preference order becomes active at once (a link that
   is up has just completed its handshake).
2. The active path is down or broken: fall back at once to the best UP path that is not broken
   (preference order, good ones first); every path that is not UP is dialled, the most
   preferred now and each next one ``fallback_stagger`` later (a blocked TCP connect must
   not hold up the relay).
3. The active path is lossy or slow and another UP path is clearly better: switch to it; the
   path left gets a *penalty* (``penalty`` seconds, doubling each time up to ``penalty_max``)
   during which it is probed but not chosen. When no alternative is UP, the others are
   dialled to find one.
4. A path preferred to the active one has been *good* for ``upgrade_hold`` seconds, is not
   penalised and not much slower (``rtt_return_factor``): switch back to it. The gap between
   the leave and return thresholds (loss, RTT) and the hold keep paths from flapping.

Dialling: at :meth:`PathSelector.start` the first transport is dialled at once and each
following one ``stagger`` seconds later, unless a path is already active and not broken
(happy-eyeballs style, so two peers behind symmetric NATs end on the relay within seconds
while the UDP attempts are still running). A failed dial is retried with exponential
backoff (``retry_min`` to ``retry_max``) while the transport is preferred to the active one
(probing back: a peer on the relay keeps trying UDP and SSH); transports less preferred than
a working active path are not redialled.
"""

from __future__ import annotations

import enum
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Dial",
    "NegotiationSettings",
    "Path",
    "PathSelector",
    "PathState",
    "Probe",
    "Switched",
]


class PathState(enum.Enum):
    IDLE = "idle"
    DIALING = "dialing"
    UP = "up"
    WAIT = "wait"


@dataclass(frozen=True)
class Dial:
    """Open a link on ``transport`` (call :meth:`PathSelector.link_up` or ``dial_failed``)."""

    transport: str
    reason: str


@dataclass(frozen=True)
class Probe:
    """Send probe ``seq`` on the link of ``transport`` (answer: :meth:`~PathSelector.probe_answered`)."""

    transport: str
    seq: int


@dataclass(frozen=True)
class Switched:
    """The active path changed (``transport`` None: no path left)."""

    transport: str | None
    previous: str | None
    reason: str


Action = Dial | Probe | Switched


@dataclass
class NegotiationSettings:
    """Timings and thresholds of path selection (seconds, fractions, milliseconds)."""

    probe_interval: float = 1.0
    standby_probe_interval: float = 5.0
    probe_timeout: float = 2.0
    dead_after: float = 3.0
    dead_probes: int = 2
    window: int = 8
    min_samples: int = 4
    loss_leave: float = 0.25
    loss_return: float = 0.0
    rtt_leave_factor: float = 3.0
    rtt_return_factor: float = 2.0
    rtt_margin: float = 20.0
    upgrade_hold: float = 2.0
    stagger: float = 1.5
    fallback_stagger: float = 1.0
    retry_min: float = 1.0
    retry_max: float = 15.0
    penalty: float = 10.0
    penalty_max: float = 120.0


@dataclass
class Path:
    """One transport towards the peer: state, probes and what went wrong last."""

    name: str
    state: PathState = PathState.IDLE
    dial_at: float | None = None
    backoff: float = 0.0
    up_since: float = 0.0
    last_reply: float = 0.0
    next_probe_at: float = 0.0
    outstanding: dict[int, float] = field(default_factory=dict)
    samples: deque[float | None] = field(default_factory=deque)
    """Resolved probes, oldest first: an RTT in ms, or None for a lost one."""
    lost_in_row: int = 0
    good_since: float | None = None
    penalty_until: float = 0.0
    penalty: float = 0.0
    error: str = ""

    @property
    def up(self) -> bool:
        return self.state is PathState.UP

    def loss(self) -> float | None:
        if not self.samples:
            return None
        return sum(1 for s in self.samples if s is None) / len(self.samples)

    def rtt(self) -> float | None:
        rtts = [s for s in self.samples if s is not None]
        return statistics.median(rtts) if rtts else None


class PathSelector:
    """Chooses the transport for one peer; see the module docstring.

    Args:
        peer: the peer's name (for reasons and logs).
        order: transport names, most preferred first.
        settings: thresholds and timings.
    """

    def __init__(
        self, peer: str, order: Sequence[str], settings: NegotiationSettings | None = None
    ) -> None:
        self.peer = peer
        self.settings = settings or NegotiationSettings()
        self.order: list[str] = []
        self.paths: dict[str, Path] = {}
        self.active: str | None = None
        self.reason = "not connected yet"
        self.switches = 0
        self._actions: deque[Action] = deque()
        self._seq = 0
        self._probe_owner: dict[int, str] = {}
        self._started = False
        self._searching = False
        """The active path is broken or degraded: standby paths are probed fast too."""
        self._set_order(order)

    # --- inputs --------------------------------------------------------------------------

    def start(self, now: float, delay: float = 0.0) -> None:
        """Begin dialling: the first transport after ``delay``, the others staggered."""
        self._started = True
        for i, name in enumerate(self.order):
            p = self.paths[name]
            if p.state in (PathState.IDLE, PathState.WAIT):
                p.dial_at = now + delay + i * self.settings.stagger
        self._evaluate(now)

    def set_order(self, order: Sequence[str], now: float) -> None:
        """Change the preference order (transports not in it are no longer used)."""
        self._set_order(order)
        if self.active is not None and self.active not in self.paths:
            self._switch(None, f"{self.active} removed from the order", now)
        if self._started:
            for p in self.paths.values():
                if p.state is PathState.IDLE and p.dial_at is None:
                    p.dial_at = now
        self._evaluate(now)

    def link_up(self, transport: str, now: float) -> None:
        """A link on ``transport`` exists (our dial succeeded, or the peer dialled us)."""
        p = self.paths.get(transport)
        if p is None:
            return
        if not p.up:
            p.state = PathState.UP
            p.up_since = p.last_reply = now
            p.next_probe_at = now
            p.outstanding.clear()
            p.samples.clear()
            p.lost_in_row = 0
            p.backoff = 0.0
            p.dial_at = None
            p.error = ""
        self._evaluate(now)

    def link_down(self, transport: str, now: float, error: str = "link closed") -> None:
        """The link on ``transport`` closed."""
        p = self.paths.get(transport)
        if p is None or not p.up:
            return
        self._failed(p, now, error)
        self._evaluate(now)

    def dial_failed(self, transport: str, now: float, error: str) -> None:
        """A :class:`Dial` of ``transport`` ended without a link."""
        p = self.paths.get(transport)
        if p is None or p.up:
            return
        self._failed(p, now, error)
        self._evaluate(now)

    def request_dial(self, transport: str, now: float) -> None:
        """Dial ``transport`` now (a rendezvous: the peer is punching towards us)."""
        p = self.paths.get(transport)
        if p is None or p.state is PathState.DIALING:
            return
        self._actions.append(Dial(transport, "rendezvous"))
        if not p.up:
            p.state = PathState.DIALING
            p.dial_at = None

    def probe_now(self, now: float) -> None:
        """Probe every UP path at the next :meth:`handle_timer` (the network changed)."""
        for p in self.paths.values():
            if p.up:
                p.next_probe_at = now

    def probe_answered(self, seq: int, now: float) -> str | None:
        """Probe ``seq`` came back; returns the transport it measured (None: unknown)."""
        name = self._probe_owner.pop(seq, None)
        p = self.paths.get(name) if name is not None else None
        if p is None or seq not in p.outstanding:
            return None
        sent = p.outstanding.pop(seq)
        self._sample(p, (now - sent) * 1000.0)
        p.last_reply = now
        p.lost_in_row = 0
        self._evaluate(now)
        return name

    def handle_timer(self, now: float) -> None:
        """Send due probes, expire lost ones, start due dials, re-evaluate."""
        s = self.settings
        for p in self.paths.values():
            for seq, sent in list(p.outstanding.items()):
                if sent + s.probe_timeout <= now:
                    del p.outstanding[seq]
                    self._probe_owner.pop(seq, None)
                    self._sample(p, None)
                    p.lost_in_row += 1
            if p.up and now >= p.next_probe_at:
                self._seq += 1
                p.outstanding[self._seq] = now
                self._probe_owner[self._seq] = p.name
                self._actions.append(Probe(p.name, self._seq))
                p.next_probe_at = now + self._probe_interval(p)
        self._evaluate(now)

    # --- outputs -------------------------------------------------------------------------

    def next_action(self) -> Action | None:
        """The next thing to do, or None."""
        return self._actions.popleft() if self._actions else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must run next (None: nothing pending)."""
        times: list[float] = []
        for p in self.paths.values():
            if p.up:
                times.append(p.next_probe_at)
            times.extend(sent + self.settings.probe_timeout for sent in p.outstanding.values())
            if p.dial_at is not None and p.state in (PathState.IDLE, PathState.WAIT):
                times.append(p.dial_at)
        return min(times) if times else None

    def quality(self, transport: str, now: float) -> str:
        """One word for a path: down, dialing, broken, lossy, good, unknown (and penalised)."""
        p = self.paths[transport]
        if not p.up:
            return p.state.value
        if self._broken(p, now):
            return "broken"
        if self._lossy(p):
            return "lossy"
        return "good" if self._good(p) else "unknown"

    def current_reason(self, now: float) -> str:
        """Why the active path is used, as of ``now``: the reason of the last switch, or, on a
        path that is not the first choice, what is wrong with each better one right now."""
        if self.active is None or self.active not in self.paths:
            return self.reason
        better = [self.paths[n] for n in self.order[: self._rank(self.active)]]
        if not better:
            return self.reason
        return "; ".join(self._why(p, now) for p in better) + f"; using {self.active}"

    def describe(self, now: float) -> dict[str, object]:
        """The selector's view, for ``node.status`` and heartbeats."""
        paths = {}
        for name in self.order:
            p = self.paths[name]
            loss = p.loss()
            rtt = p.rtt()
            paths[name] = {
                "state": self.quality(name, now),
                "rtt_ms": round(rtt, 2) if rtt is not None else None,
                "loss": round(loss, 3) if loss is not None else None,
                "penalised": p.penalty_until > now,
                "error": p.error,
            }
        return {"active": self.active, "reason": self.current_reason(now), "paths": paths}

    # --- internals -----------------------------------------------------------------------

    def _set_order(self, order: Sequence[str]) -> None:
        seen: list[str] = []
        for name in order:
            if name not in seen:
                seen.append(name)
        self.order = seen
        self.paths = {n: self.paths.get(n) or Path(n) for n in seen}

    def _probe_interval(self, p: Path) -> float:
        s = self.settings
        if (
            self.active is None
            or self._searching
            or p.name == self.active
            or self._rank(p.name) < self._rank(self.active)
        ):
            return s.probe_interval
        return s.standby_probe_interval

    def _rank(self, name: str) -> int:
        return self.order.index(name) if name in self.order else len(self.order)

    def _sample(self, p: Path, value: float | None) -> None:
        p.samples.append(value)
        while len(p.samples) > self.settings.window:
            p.samples.popleft()

    def _failed(self, p: Path, now: float, error: str) -> None:
        s = self.settings
        p.state = PathState.WAIT
        p.error = error
        p.outstanding.clear()
        p.good_since = None
        p.backoff = min(max(p.backoff * 2, s.retry_min), s.retry_max)
        p.dial_at = now + p.backoff

    def _broken(self, p: Path, now: float) -> bool:
        s = self.settings
        return p.lost_in_row >= s.dead_probes and now - p.last_reply >= s.dead_after

    def _lossy(self, p: Path) -> bool:
        loss = p.loss()
        return (
            loss is not None
            and len(p.samples) >= self.settings.min_samples
            and loss >= self.settings.loss_leave
        )

    def _good(self, p: Path) -> bool:
        loss = p.loss()
        return (
            len(p.samples) >= self.settings.min_samples
            and loss is not None
            and loss <= self.settings.loss_return
        )

    def _fair(self, p: Path, now: float) -> bool:
        """Good enough to flee to from a degraded path: measured, little loss, not broken."""
        loss = p.loss()
        return (
            not self._broken(p, now)
            and len(p.samples) >= self.settings.min_samples
            and loss is not None
            and loss < self.settings.loss_leave / 2
        )

    def _slow_against(self, p: Path, other: Path, factor: float) -> bool:
        a, b = p.rtt(), other.rtt()
        return a is not None and b is not None and a > factor * b + self.settings.rtt_margin

    def _switch(self, name: str | None, reason: str, now: float) -> None:
        previous = self.active
        self.active = name
        self.reason = reason
        if name != previous:
            self.switches += 1
            self._actions.append(Switched(name, previous, reason))
        for p in self.paths.values():
            p.next_probe_at = min(p.next_probe_at, now + self._probe_interval(p))

    def _penalise(self, p: Path, now: float) -> None:
        s = self.settings
        p.penalty = min(max(p.penalty * 2, s.penalty), s.penalty_max)
        p.penalty_until = now + p.penalty
        p.good_since = None

    def _why(self, p: Path, now: float) -> str:
        if not p.up:
            return f"{p.name}: {p.error or p.state.value}"
        if self._broken(p, now):
            return f"{p.name}: no answer for {now - p.last_reply:.1f} s"
        loss = p.loss() or 0.0
        if p.penalty_until > now:
            return f"{p.name}: {loss:.0%} loss, retried in {p.penalty_until - now:.0f} s"
        return f"{p.name}: {loss:.0%} loss"

    def _evaluate(self, now: float) -> None:
        s = self.settings
        for p in self.paths.values():
            if p.up and self._good(p) and not self._broken(p, now):
                if p.good_since is None:
                    p.good_since = now
            else:
                p.good_since = None
        ups = [self.paths[n] for n in self.order if self.paths[n].up]
        searching = self._searching
        alive = [p for p in ups if not self._broken(p, now)]
        active = self.paths.get(self.active) if self.active is not None else None

        if active is None or not active.up or self._broken(active, now):
            pick = self._fallback_pick(alive, now)
            if active is None:
                if pick is not None:
                    self._switch(pick.name, self._first_reason(pick, now), now)
            else:
                why = self._why(active, now)
                if pick is not None:
                    self._switch(pick.name, f"{why}; fell back to {pick.name}", now)
                elif not active.up:
                    self._switch(None, f"{why}; no other path up", now)
                else:
                    self.reason = f"{why}; no other path up"
                self._want_all(now)
        else:
            degraded = ""
            if self._lossy(active):
                degraded = f"{active.name}: {active.loss():.0%} loss"
            else:
                for other in alive:
                    if (
                        other is not active
                        and self._fair(other, now)
                        and self._slow_against(active, other, s.rtt_leave_factor)
                    ):
                        degraded = (
                            f"{active.name}: rtt {active.rtt():.0f} ms vs "
                            f"{other.name} {other.rtt():.0f} ms"
                        )
                        break
            if degraded:
                better = [
                    p
                    for p in alive
                    if p is not active
                    and p.penalty_until <= now
                    and self._fair(p, now)
                    and (p.loss() or 0.0) < (active.loss() or 0.0) + 1e-9
                    and not self._slow_against(p, active, 1.0)
                ]
                if better:
                    self._penalise(active, now)
                    self._switch(better[0].name, f"{degraded}; moved to {better[0].name}", now)
                else:
                    self._want_all(now)
            else:
                for p in alive:
                    if self._rank(p.name) >= self._rank(active.name):
                        break
                    if (
                        p.penalty_until <= now
                        and p.good_since is not None
                        and now - p.good_since >= s.upgrade_hold
                        and not self._slow_against(p, active, s.rtt_return_factor)
                    ):
                        rtt = p.rtt()
                        reason = f"{p.name} preferred and working again" + (
                            f" ({rtt:.1f} ms)" if rtt is not None else ""
                        )
                        better = [self.paths[n] for n in self.order[: self._rank(p.name)]]
                        if better:
                            reason += "; " + "; ".join(self._why(b, now) for b in better)
                        self._switch(p.name, reason, now)
                        break
        active = self.paths.get(self.active) if self.active is not None else None
        self._searching = active is None or self._broken(active, now) or self._lossy(active)
        if self._searching and not searching:
            for p in self.paths.values():
                p.next_probe_at = min(p.next_probe_at, now + s.probe_interval)
        self._schedule_dials(now)

    def _fallback_pick(self, alive: list[Path], now: float) -> Path | None:
        if not alive:
            return None
        free = [p for p in alive if p.penalty_until <= now] or alive
        clean = [p for p in free if not self._lossy(p)]
        return (clean or free)[0]

    def _first_reason(self, pick: Path, now: float) -> str:
        better = [self.paths[n] for n in self.order[: self._rank(pick.name)]]
        if not better:
            return f"{pick.name}: preferred"
        return "; ".join(self._why(p, now) for p in better) + f"; using {pick.name}"

    def _want_all(self, now: float) -> None:
        """Active path broken, degraded or missing: dial every path that is not up, now."""
        if not self._started:
            return
        i = 0
        for name in self.order:
            p = self.paths[name]
            if p.state not in (PathState.IDLE, PathState.WAIT):
                continue
            # happy eyeballs: the more preferred first, the next ones a moment later; a
            # path that keeps failing keeps its backoff, but no more than retry_min
            when = now + i * self.settings.fallback_stagger
            if p.state is PathState.WAIT and p.dial_at is not None and p.backoff > 0:
                when = max(when, min(p.dial_at, now + self.settings.retry_min))
            if p.dial_at is None or p.dial_at > when:
                p.dial_at = when
            i += 1

    def _schedule_dials(self, now: float) -> None:
        if not self._started:
            return
        active = self.paths.get(self.active) if self.active is not None else None
        working = active is not None and active.up and not self._broken(active, now)
        for name in self.order:
            p = self.paths[name]
            if p.state not in (PathState.IDLE, PathState.WAIT) or p.dial_at is None:
                continue
            if p.dial_at > now:
                continue
            if (
                working
                and active is not None
                and self._rank(name) > self._rank(active.name)
                and not self._lossy(active)
            ):
                p.dial_at = None  # less preferred than a working path: not needed
                continue
            p.state = PathState.DIALING
            p.dial_at = None
            self._actions.append(
                Dial(name, "retry" if p.error else "start" if not working else "probing back")
            )
