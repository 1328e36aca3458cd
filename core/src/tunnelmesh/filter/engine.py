"""The stateful packet filter engine: pure logic, no IO, time passed in.

:class:`PortFilter` implements :class:`tunnelmesh.abc.PacketFilter`. The forwarder calls
``verdicts(packets, peer, inbound)`` once per batch: ``inbound=True`` for packets that came out
of a tunnel from ``peer`` and go to the TUN device, ``inbound=False`` for packets read from the
TUN device on their way to ``peer``.

What is filtered (see ``docs/filter.md`` for the full story):

* **Outbound** packets always pass; they open connection-tracking entries (TCP SYN, any UDP
  datagram, ICMP echo requests) so that the replies pass inbound whatever the rules say.
  This is what the original lacked for UDP.
* **Inbound** TCP and UDP packets that belong to a tracked flow pass. A packet that opens a new
  flow is looked up in the merged rules (:mod:`tunnelmesh.filter.rules`) by destination port
  and source peer; when no rule matches, ``default_deny`` decides. Allowed flows are tracked,
  and re-checked against the rules whenever the rules change (a new deny cuts live flows).
* **Inbound ICMP** passes when ``allow_icmp`` is set. Otherwise only echo replies to our own
  echo requests and ICMP errors about tracked flows pass.
* Inbound packets of other protocols pass unless ``default_deny`` is set. Malformed packets
  (too short, not IP) are dropped; non-first fragments pass (the first one was filtered).

Rule changes, TTL expiry and defaults bump a generation number; nothing is recompiled per
packet. Times are unix seconds (``clock``, default :func:`time.time`); every method that needs
the time takes ``now`` for tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import msgspec

from tunnelmesh.abc import PacketFilter
from tunnelmesh.filter.conntrack import (
    CLOSING,
    ESTABLISHED,
    IN,
    OUT,
    SYN,
    Conntrack,
    Entry,
    Key,
    Timeouts,
)
from tunnelmesh.filter.packet import (
    FRAGMENT,
    ICMP,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6,
    TCP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    UDP,
    icmp_inner,
    is_icmp_error,
    parse,
)
from tunnelmesh.filter.rules import (
    LAYER_ORDER,
    PROTOCOLS,
    Compiled,
    Counter,
    Layer,
    Rule,
    RuleKey,
    compile_rules,
)

__all__ = ["FilterStats", "PortFilter", "RuleStats"]

Packet = bytes | bytearray | memoryview


class RuleStats(msgspec.Struct, frozen=True, kw_only=True):
    """One rule as ``filter list`` and the dashboard show it."""

    layer: str
    port: int
    protocol: str
    action: str
    source_peer: str
    expires: float
    allowed: int
    denied: int


class FilterStats(msgspec.Struct, frozen=True, kw_only=True):
    """The filter's state and counters (packets), for ``filter list`` and metrics."""

    default_deny: bool
    allow_icmp: bool
    rules: list[RuleStats]
    default_allowed: int
    default_denied: int
    tracked: int
    tracked_passed: int
    icmp_denied: int
    other_denied: int
    malformed: int
    evicted: int


class PortFilter(PacketFilter):
    """Stateful port filter with four rule layers; see the module docstring.

    Args:
        default_deny: drop new inbound flows that no rule allows.
        allow_icmp: pass all inbound ICMP (else only replies and errors for tracked flows).
        max_flows: the size bound of the connection-tracking table.
        timeouts: connection-tracking timeouts.
        clock: the time source for :meth:`verdicts` (unix seconds).
    """

    name: ClassVar[str] = "ports"

    def __init__(
        self,
        *,
        default_deny: bool = False,
        allow_icmp: bool = True,
        max_flows: int = 65536,
        timeouts: Timeouts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.default_deny = default_deny
        self.allow_icmp = allow_icmp
        self.clock = clock
        self.conntrack = Conntrack(max_flows, timeouts)
        self._t = self.conntrack.timeouts
        self._layers: dict[Layer, dict[RuleKey, Rule]] = {layer: {} for layer in LAYER_ORDER}
        self._counters: dict[tuple[Layer, RuleKey], Counter] = {}
        self._gen = 0
        self._compiled = Compiled({}, math.inf)
        self.default_allowed = 0
        self.default_denied = 0
        self.tracked_passed = 0
        self.icmp_denied = 0
        self.other_denied = 0
        self.malformed = 0

    # --- rules -----------------------------------------------------------------------------

    def configure(
        self, *, default_deny: bool | None = None, allow_icmp: bool | None = None
    ) -> None:
        """Change the default policy; live flows admitted by the old default are re-checked."""
        if default_deny is not None:
            self.default_deny = default_deny
        if allow_icmp is not None:
            self.allow_icmp = allow_icmp
        self._recompile(self.clock())

    def set_layer(self, layer: Layer, rules: Iterable[Rule], now: float | None = None) -> None:
        """Replace every rule of ``layer`` (a coordinator push, a config reload, services)."""
        table: dict[RuleKey, Rule] = {}
        for rule in rules:
            table[rule.key] = rule
        old = self._layers[layer]
        for key, rule in old.items():
            if table.get(key) != rule:
                self._counters.pop((layer, key), None)
        self._layers[layer] = table
        for key, rule in table.items():
            if (layer, key) not in self._counters:
                self._counters[(layer, key)] = Counter(layer, rule)
        self._recompile(self.clock() if now is None else now)

    def add_rule(self, layer: Layer, rule: Rule, now: float | None = None) -> None:
        """Add ``rule`` to ``layer``, replacing the rule with the same key there."""
        key = rule.key
        self._layers[layer][key] = rule
        self._counters[(layer, key)] = Counter(layer, rule)
        self._recompile(self.clock() if now is None else now)

    def remove_rule(
        self,
        layer: Layer,
        protocol: str,
        port: int,
        source_peer: str = "",
        now: float | None = None,
    ) -> bool:
        """Remove the rule with this key from ``layer``; return whether there was one."""
        key = (protocol, port, source_peer)
        if self._layers[layer].pop(key, None) is None:
            return False
        self._counters.pop((layer, key), None)
        self._recompile(self.clock() if now is None else now)
        return True

    def layer_rules(self, layer: Layer) -> list[Rule]:
        return list(self._layers[layer].values())

    def _recompile(self, now: float) -> None:
        for layer, table in self._layers.items():
            stale = [k for k, r in table.items() if r.expires and r.expires <= now]
            for key in stale:
                del table[key]
                self._counters.pop((layer, key), None)
        self._compiled = compile_rules(self._layers, self._counters, now)
        self._gen += 1

    def expire(self, now: float | None = None) -> None:
        """Drop expired rules and flows (the daemon calls this every few seconds)."""
        now = self.clock() if now is None else now
        if now >= self._compiled.next_expiry:
            self._recompile(now)
        self.conntrack.expire(now)

    def decide(self, protocol: str, port: int, peer: str) -> bool:
        """What the rules say about a new inbound flow (no counting, no tracking)."""
        verdict, _ = self._compiled.decide(PROTOCOLS[protocol], port, peer)
        return (not self.default_deny) if verdict is None else verdict

    def stats(self, now: float | None = None) -> FilterStats:
        """Rules (live ones, layer by layer) with their counters, and the global counters."""
        now = self.clock() if now is None else now
        rows = []
        for layer in LAYER_ORDER:
            for key, rule in sorted(self._layers[layer].items()):
                if rule.expires and rule.expires <= now:
                    continue
                c = self._counters[(layer, key)]
                rows.append(
                    RuleStats(
                        layer=layer.value,
                        port=rule.port,
                        protocol=rule.protocol,
                        action=rule.action,
                        source_peer=rule.source_peer,
                        expires=rule.expires,
                        allowed=c.allowed,
                        denied=c.denied,
                    )
                )
        return FilterStats(
            default_deny=self.default_deny,
            allow_icmp=self.allow_icmp,
            rules=rows,
            default_allowed=self.default_allowed,
            default_denied=self.default_denied,
            tracked=len(self.conntrack),
            tracked_passed=self.tracked_passed,
            icmp_denied=self.icmp_denied,
            other_denied=self.other_denied,
            malformed=self.malformed,
            evicted=self.conntrack.evicted,
        )

    # --- packets ---------------------------------------------------------------------------

    def verdicts(
        self, packets: Sequence[Packet], peer: str, inbound: bool, now: float | None = None
    ) -> list[bool]:
        """One verdict per packet (True passes); see the module docstring. Never raises."""
        if now is None:
            now = self.clock()
        if now >= self._compiled.next_expiry:
            self._recompile(now)
        if inbound:
            return [self._inbound(p, peer, now) for p in packets]
        return [self._outbound(p, peer, now) for p in packets]

    def _rules_verdict(self, proto: int, port: int, peer: str) -> tuple[bool, Counter | None]:
        verdict, counter = self._compiled.decide(proto, port, peer)
        if verdict is None:
            return not self.default_deny, None
        return verdict, counter

    def _recheck(self, entry: Entry, proto: int, local_port: int) -> None:
        entry.verdict, entry.counter = self._rules_verdict(proto, local_port, entry.peer)
        entry.gen = self._gen

    def _count(self, entry: Entry, passed: bool) -> None:
        counter = entry.counter
        if counter is None:
            if entry.origin == OUT:
                self.tracked_passed += 1
            elif passed:
                self.default_allowed += 1
            else:
                self.default_denied += 1
        elif passed:
            counter.allowed += 1
        else:
            counter.denied += 1

    def _touch_tcp(self, entry: Entry, flags: int, reply: bool, now: float) -> None:
        t = self._t
        if flags & TCP_RST:
            entry.state = CLOSING
            entry.deadline = now + t.tcp_reset
            return
        if reply:
            entry.replied = True
        if flags & TCP_FIN or entry.state == CLOSING:
            entry.state = CLOSING
            entry.deadline = now + t.tcp_closing
        elif entry.state == SYN and entry.replied and not (flags & TCP_SYN and not reply):
            entry.state = ESTABLISHED
            entry.deadline = now + t.tcp_established
        elif entry.state == ESTABLISHED:
            entry.deadline = now + t.tcp_established
        else:
            entry.deadline = now + t.tcp_opening

    def _touch_udp(self, entry: Entry, reply: bool, now: float) -> None:
        if reply:
            entry.replied = True
        entry.deadline = now + (self._t.udp_replied if entry.replied else self._t.udp)

    def _outbound(self, pkt: Packet, peer: str, now: float) -> bool:
        p = parse(pkt)
        if p is None:
            return True
        proto, src, dst, sport, dport, extra = p
        if proto in (TCP, UDP):
            key: Key = (proto, src, sport, dst, dport)
            entry = self.conntrack.get(key, now)
            if entry is not None and entry.peer == peer:
                reply = entry.origin == IN
                if reply:
                    if entry.gen != self._gen:
                        self._recheck(entry, proto, sport)
                    if not entry.verdict:
                        # A flow the rules now deny: drop our side too, keep the tombstone.
                        return False
                if proto == TCP:
                    self._touch_tcp(entry, extra, reply, now)
                else:
                    self._touch_udp(entry, reply, now)
                return True
            if proto == UDP:
                self.conntrack.add(key, Entry(OUT, peer, now + self._t.udp), now)
            elif extra & TCP_SYN and not extra & (TCP_ACK | TCP_RST):
                self.conntrack.add(key, Entry(OUT, peer, now + self._t.tcp_opening), now)
            return True
        if (proto in (ICMP, ICMPV6)) and extra == ICMP_ECHO_REQUEST[proto]:
            key = (proto, src, sport, dst, dport)
            entry = self.conntrack.get(key, now)
            if entry is not None and entry.peer == peer:
                entry.deadline = now + self._t.icmp
            else:
                self.conntrack.add(key, Entry(OUT, peer, now + self._t.icmp), now)
        return True

    def _inbound(self, pkt: Packet, peer: str, now: float) -> bool:
        p = parse(pkt)
        if p is None:
            self.malformed += 1
            return False
        proto, src, dst, sport, dport, extra = p
        if proto in (TCP, UDP):
            key: Key = (proto, dst, dport, src, sport)
            entry = self.conntrack.get(key, now)
            if entry is not None and entry.peer == peer:
                if entry.origin == IN:
                    if entry.gen != self._gen:
                        self._recheck(entry, proto, dport)
                    if not entry.verdict:
                        self._count(entry, False)
                        entry.deadline = now + self._t.tcp_opening
                        return False
                reply = entry.origin == OUT
                if proto == TCP:
                    self._touch_tcp(entry, extra, reply, now)
                else:
                    self._touch_udp(entry, reply, now)
                self._count(entry, True)
                return True
            verdict, counter = self._rules_verdict(proto, dport, peer)
            if counter is None:
                if verdict:
                    self.default_allowed += 1
                else:
                    self.default_denied += 1
            elif verdict:
                counter.allowed += 1
            else:
                counter.denied += 1
            if verdict and entry is None and not (proto == TCP and extra & TCP_RST):
                # (A live entry of another peer is never replaced by this one's packets.)
                entry = Entry(IN, peer, now, gen=self._gen, counter=counter)
                if proto == TCP:
                    if not extra & TCP_SYN:
                        entry.state = ESTABLISHED  # mid-flow (e.g. after a restart)
                    self._touch_tcp(entry, extra, False, now)
                else:
                    self._touch_udp(entry, False, now)
                self.conntrack.add(key, entry, now)
            return verdict
        if proto in (ICMP, ICMPV6):
            if self.allow_icmp:
                return True
            if extra == ICMP_ECHO_REPLY[proto]:
                entry = self.conntrack.get((proto, dst, dport, src, sport), now)
                if entry is not None and entry.peer == peer and entry.origin == OUT:
                    self.tracked_passed += 1
                    return True
            elif is_icmp_error(proto, extra):
                inner = icmp_inner(pkt)
                if inner is not None:
                    iproto, isrc, idst, isport, idport, _ = inner
                    entry = self.conntrack.get((iproto, isrc, isport, idst, idport), now)
                    if entry is not None and entry.peer == peer and entry.verdict:
                        self.tracked_passed += 1
                        return True
            self.icmp_denied += 1
            return False
        if proto == FRAGMENT:
            return True
        if self.default_deny:
            self.other_denied += 1
            return False
        return True
