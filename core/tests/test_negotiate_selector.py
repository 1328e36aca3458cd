"""The sans-IO path selector (tunnelmesh.node.negotiate) in a simulated network: explicit
time, no sockets, no sleeps. Each test checks one rule or transition: start-up order and
stagger, fallback timing, probing back, quality thresholds, hysteresis, order changes."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from tunnelmesh.node.negotiate import (
    Dial,
    NegotiationSettings,
    PathSelector,
    PathState,
    Probe,
    Switched,
)

ORDER = ["udp", "ssh", "relay"]


@dataclass
class Net:
    """How one transport behaves in the simulation (changeable mid-run)."""

    works: bool = True
    dial_time: float = 0.05
    fail_time: float = 5.0
    rtt: float = 0.002
    loss: float = 0.0  # a deterministic share of probes is lost (see Sim._lost)


@dataclass
class Sim:
    sel: PathSelector
    nets: dict[str, Net]
    now: float = 0.0
    queue: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    switches: list[tuple[float, Switched]] = field(default_factory=list)
    dials: list[tuple[float, str]] = field(default_factory=list)
    probes: dict[str, int] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _lost_acc: dict[str, float] = field(default_factory=dict)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (t, next(self._ids), fn))

    def _lost(self, name: str) -> bool:
        # error diffusion: exactly `loss` of the probes are lost, evenly spread
        acc = self._lost_acc.get(name, 0.0) + self.nets[name].loss
        lost = acc >= 1.0 - 1e-9
        self._lost_acc[name] = acc - 1.0 if lost else acc
        return lost

    def drain(self) -> None:
        while (action := self.sel.next_action()) is not None:
            if isinstance(action, Switched):
                self.switches.append((self.now, action))
            elif isinstance(action, Dial):
                self.dials.append((self.now, action.transport))
                net = self.nets[action.transport]
                name = action.transport
                if net.works:
                    self.at(self.now + net.dial_time, lambda n=name: self.sel.link_up(n, self.now))
                else:
                    self.at(
                        self.now + net.fail_time,
                        lambda n=name: self.sel.dial_failed(n, self.now, "no answer"),
                    )
            elif isinstance(action, Probe):
                self.probes[action.transport] = self.probes.get(action.transport, 0) + 1
                net = self.nets[action.transport]
                if net.works and not self._lost(action.transport):
                    seq = action.seq
                    self.at(self.now + net.rtt, lambda s=seq: self.sel.probe_answered(s, self.now))

    def run_until(self, t_end: float) -> None:
        self.drain()
        while True:
            timer = self.sel.get_timer()
            nxt = self.queue[0][0] if self.queue else None
            cands = [x for x in (timer, nxt) if x is not None]
            if not cands or min(cands) > t_end:
                self.now = t_end
                return
            t = min(cands)
            assert t >= self.now - 1e-9, "time went backwards"
            self.now = max(self.now, t)
            if nxt is not None and nxt <= t:
                _, _, fn = heapq.heappop(self.queue)
                fn()
            else:
                self.sel.handle_timer(self.now)
                after = self.sel.get_timer()
                assert after is None or after > self.now, "timer not advanced (busy loop)"
            self.drain()

    def active_at(self, t: float) -> str | None:
        cur: str | None = None
        for when, sw in self.switches:
            if when <= t:
                cur = sw.transport
        return cur

    def first_switch_to(self, name: str, after: float = 0.0) -> float | None:
        return next((w for w, s in self.switches if s.transport == name and w >= after), None)


def make(
    order: list[str] | None = None, settings: NegotiationSettings | None = None, **nets: Net
) -> Sim:
    order = order or ORDER
    sel = PathSelector("beta", order, settings)
    full = {n: nets.get(n, Net()) for n in order}
    sim = Sim(sel, full)
    sel.start(0.0)
    return sim


def test_the_preferred_transport_is_dialled_first_and_the_others_not_at_all() -> None:
    sim = make()
    sim.run_until(30)
    assert sim.sel.active == "udp"
    assert sim.switches[0][1] == Switched("udp", None, "udp: preferred")
    assert sim.switches[0][0] < 0.1
    assert [t for _, t in sim.dials] == ["udp"]  # ssh and relay were never needed
    assert len(sim.switches) == 1
    assert sim.probes["udp"] >= 25  # the active path is probed every second


def test_dials_are_staggered_and_symmetric_nats_end_on_the_relay_quickly() -> None:
    # both behind symmetric NATs: UDP and SSH never answer, the relay does
    sim = make(udp=Net(works=False, fail_time=10), ssh=Net(works=False, fail_time=10))
    sim.run_until(60)
    first = {t: w for w, t in reversed(sim.dials)}
    assert first["udp"] == 0 and first["ssh"] == pytest.approx(1.5) and first["relay"] == 3.0
    t_relay = sim.first_switch_to("relay")
    assert t_relay is not None and t_relay < 4
    assert sim.sel.active == "relay"
    assert "udp: no answer" in sim.sel.reason or "udp: dialing" in sim.switches[0][1].reason
    # and it keeps probing back: UDP and SSH are redialled with growing gaps (at most 15 s)
    udp_times = [w for w, t in sim.dials if t == "udp"]
    assert len(udp_times) >= 4
    gaps = [b - a for a, b in itertools.pairwise(udp_times)]
    assert max(gaps) <= 10 + 15 + 1e-6


def test_probing_back_moves_from_the_relay_to_udp_when_it_opens() -> None:
    sim = make(udp=Net(works=False), ssh=Net(works=False))
    sim.run_until(40)
    assert sim.sel.active == "relay"
    sim.nets["udp"].works = True
    sim.run_until(100)
    t_udp = sim.first_switch_to("udp", after=40)
    assert t_udp is not None and t_udp - 40 < 30
    assert sim.sel.active == "udp"
    assert "udp preferred and working again" in sim.sel.reason
    assert [s.transport for _, s in sim.switches] == ["relay", "udp"]


def test_a_broken_direct_path_falls_back_within_a_few_seconds() -> None:
    sim = make(ssh=Net(dial_time=0.3))
    sim.run_until(20)
    assert sim.sel.active == "udp"
    sim.nets["udp"].works = False  # UDP blocked between the peers
    sim.run_until(40)
    t = sim.first_switch_to("ssh")
    assert t is not None and 20 < t <= 20 + 5.0
    sw = sim.switches[-1][1]
    assert sw.previous == "udp" and sw.transport == "ssh"
    assert "udp: no answer for" in sw.reason and "fell back to ssh" in sw.reason


def test_udp_then_tcp_blocked_ends_on_the_relay_and_unblocking_returns_to_udp() -> None:
    sim = make(ssh=Net(dial_time=0.3, fail_time=10), relay=Net(dial_time=0.2))
    sim.run_until(10)
    sim.nets["udp"].works = False
    sim.run_until(30)
    assert sim.sel.active == "ssh"
    sim.nets["ssh"].works = False  # TCP blocked too; the coordinator stays reachable
    sim.run_until(50)
    t_relay = sim.first_switch_to("relay")
    assert t_relay is not None and t_relay - 30 <= 5.0
    sim.nets["udp"].works = sim.nets["ssh"].works = True
    sim.run_until(100)
    t_udp = sim.first_switch_to("udp", after=50)
    assert t_udp is not None and t_udp - 50 <= 30
    assert [s.transport for _, s in sim.switches] == ["udp", "ssh", "relay", "udp"]


def test_heavy_loss_moves_to_a_better_transport_and_back_without_flapping() -> None:
    sim = make()
    sim.run_until(15)
    sim.nets["udp"].loss = 0.4
    sim.run_until(90)
    t_ssh = sim.first_switch_to("ssh")
    assert t_ssh is not None and 15 < t_ssh < 15 + 15
    assert "udp: " in sim.switches[-1][1].reason and "loss" in sim.switches[-1][1].reason
    assert sim.sel.active == "ssh"  # while the loss lasts it does not go back
    assert sim.sel.paths["udp"].state is PathState.UP  # ... but keeps probing UDP
    assert sim.sel.quality("udp", sim.now) == "lossy"
    sim.nets["udp"].loss = 0.0
    sim.run_until(150)
    t_back = sim.first_switch_to("udp", after=90)
    assert t_back is not None and t_back - 90 < 20
    assert [s.transport for _, s in sim.switches] == ["udp", "ssh", "udp"]


def test_moderate_loss_between_the_thresholds_changes_nothing() -> None:
    # 12.5% loss: above the return threshold, below the leave threshold (hysteresis)
    sim = make()
    sim.run_until(10)
    sim.nets["udp"].loss = 0.125
    sim.run_until(120)
    assert [s.transport for _, s in sim.switches] == ["udp"]


def test_a_penalised_path_is_not_taken_back_before_its_penalty_ends() -> None:
    settings = NegotiationSettings(penalty=40.0)
    sim = make(settings=settings)
    sim.run_until(10)
    sim.nets["udp"].loss = 0.5
    sim.run_until(30)
    t_left = sim.first_switch_to("ssh")
    assert t_left is not None
    sim.nets["udp"].loss = 0.0
    sim.run_until(120)
    t_back = sim.first_switch_to("udp", after=t_left)
    assert t_back is not None and t_back >= t_left + 40


def test_a_direct_path_far_slower_than_the_alternative_is_left() -> None:
    sim = make()
    sim.run_until(5)
    # SSH comes up meanwhile (e.g. the peer dialled it), then UDP gets 300 ms slower
    sim.sel.link_up("ssh", sim.now)
    sim.nets["udp"].rtt = 0.300
    sim.run_until(60)
    assert sim.sel.active == "ssh"
    assert "rtt" in sim.sel.reason
    # back to normal: returns once good for the hold (RTT within the return factor)
    sim.nets["udp"].rtt = 0.002
    sim.run_until(120)
    assert sim.sel.active == "udp"


def test_similar_rtts_do_not_leave_the_preferred_path() -> None:
    sim = make(udp=Net(rtt=0.030), ssh=Net(rtt=0.015))
    sim.run_until(2)
    sim.sel.link_up("ssh", sim.now)
    sim.run_until(60)
    assert [s.transport for _, s in sim.switches] == ["udp"]


def test_order_change_per_peer_moves_the_path() -> None:
    sim = make()
    sim.run_until(10)
    sim.sel.set_order(["relay", "udp", "ssh"], sim.now)
    sim.run_until(40)
    assert sim.sel.active == "relay"
    assert "relay preferred" in sim.sel.reason
    sim.sel.set_order(["udp"], sim.now)  # relay no longer allowed at all
    sim.run_until(60)
    assert sim.sel.active == "udp"
    assert list(sim.sel.paths) == ["udp"]


def test_active_link_closed_with_nothing_else_reports_and_redials() -> None:
    sim = make(order=["udp"])
    sim.run_until(5)
    sim.sel.link_down("udp", sim.now, "connection reset")
    sim.drain()
    assert sim.switches[-1][1] == Switched(None, "udp", "udp: connection reset; no other path up")
    sim.run_until(15)
    assert sim.sel.active == "udp"  # redialled after the backoff
    assert len([t for _, t in sim.dials if t == "udp"]) == 2


def test_incoming_link_on_a_preferred_transport_is_taken_after_the_hold() -> None:
    sim = make(udp=Net(works=False), ssh=Net(works=False))
    sim.run_until(20)
    assert sim.sel.active == "relay"
    sim.nets["udp"].works = True
    sim.sel.link_up("udp", sim.now)  # the peer punched through to us
    sim.run_until(40)
    assert sim.sel.active == "udp"


def test_rendezvous_requests_a_dial_even_when_the_path_is_up() -> None:
    sim = make()
    sim.run_until(3)
    sim.sel.request_dial("udp", sim.now)
    action = sim.sel.next_action()
    while isinstance(action, Probe):
        action = sim.sel.next_action()
    assert action == Dial("udp", "rendezvous")
    sim.sel.request_dial("nope", sim.now)  # unknown transports are ignored
    assert all(not isinstance(a, Dial) for a in iter(sim.sel.next_action, None))


def test_describe_reports_every_path() -> None:
    sim = make(ssh=Net(works=False), relay=Net(works=False))
    sim.run_until(12)
    d = sim.sel.describe(sim.now)
    assert d["active"] == "udp"
    paths = d["paths"]
    assert isinstance(paths, dict)
    assert paths["udp"]["state"] == "good" and paths["udp"]["loss"] == 0
    assert paths["ssh"]["state"] in ("idle", "wait")


def test_late_answers_and_unknown_probes_are_ignored() -> None:
    sel = PathSelector("beta", ORDER)
    sel.start(0.0)
    assert sel.next_action() == Dial("udp", "start")
    sel.link_up("udp", 0.1)
    sel.handle_timer(0.1)
    probes = [a for a in iter(sel.next_action, None) if isinstance(a, Probe)]
    assert probes and probes[0].transport == "udp"
    sel.handle_timer(5.0)  # the probe expired
    assert sel.probe_answered(probes[0].seq, 5.1) is None
    assert sel.probe_answered(12345, 5.1) is None
    assert sel.paths["udp"].loss() == 1.0


def test_the_live_reason_names_what_is_wrong_with_better_paths() -> None:
    sim = make(udp=Net(works=False), ssh=Net(works=False))
    sim.run_until(30)
    assert sim.sel.active == "relay"
    reason = sim.sel.current_reason(sim.now)
    assert reason.endswith("; using relay")
    assert "udp: no answer" in reason or "udp: dialing" in reason
    assert "ssh:" in reason
