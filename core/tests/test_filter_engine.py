"""The packet filter engine, sans-IO: crafted packets, explicit time, no sockets."""

from __future__ import annotations

import pytest
from tunnelmesh.filter import Layer, PortFilter, Rule, Timeouts
from tunnelmesh.filter.craft import ACK, FIN, RST, SYN, fragment, icmp, icmp_error, tcp, udp
from tunnelmesh.filter.packet import FRAGMENT, TCP, UDP, parse

ME = "10.42.0.1"
A = "10.42.0.2"  # peer "alpha"
B = "10.42.0.3"  # peer "beta"
ME6 = "fd42::1"
A6 = "fd42::2"
T0 = 1_000_000.0


def inbound(f: PortFilter, pkt: bytes, peer: str = "alpha", now: float = T0) -> bool:
    return f.verdicts([pkt], peer, True, now=now)[0]


def outbound(f: PortFilter, pkt: bytes, peer: str = "alpha", now: float = T0) -> bool:
    return f.verdicts([pkt], peer, False, now=now)[0]


def syn_in(port: int, src: str = A, sport: int = 40000) -> bytes:
    return tcp(src, ME, sport, port, SYN)


def make(*, default_deny: bool = True, allow_icmp: bool = True, **kw: object) -> PortFilter:
    return PortFilter(default_deny=default_deny, allow_icmp=allow_icmp, clock=lambda: T0, **kw)  # type: ignore[arg-type]


# --- parsing ---------------------------------------------------------------------------------


def test_parse_ipv4_and_ipv6_transport_headers() -> None:
    p = parse(tcp(A, ME, 1234, 22, SYN))
    assert p is not None and p[0] == TCP and (p[3], p[4], p[5]) == (1234, 22, SYN)
    p = parse(udp(A6, ME6, 5353, 53))
    assert p is not None and p[0] == UDP and (p[3], p[4]) == (5353, 53) and len(p[1]) == 16
    p = parse(memoryview(bytearray(udp(A, ME, 1, 2))))
    assert p is not None and (p[3], p[4]) == (1, 2)


def test_parse_ipv6_extension_headers_and_fragments() -> None:
    pkt = bytearray(tcp(A6, ME6, 1000, 443, SYN))
    # Insert a hop-by-hop header (8 bytes) before the TCP header.
    hop = bytes([TCP, 0, 0, 0, 0, 0, 0, 0])
    pkt[6] = 0
    pkt[4:6] = (len(pkt) - 40 + 8).to_bytes(2, "big")
    ext = bytes(pkt[:40]) + hop + bytes(pkt[40:])
    p = parse(ext)
    assert p is not None and p[0] == TCP and p[4] == 443
    frag_hdr = bytes([TCP, 0, 0x00, 0x08, 0, 0, 0, 1])  # offset 1 (x8 bytes): not first
    raw = bytearray(tcp(A6, ME6, 1000, 443, SYN))
    raw[6] = 44
    frag = bytes(raw[:40]) + frag_hdr + bytes(raw[40:])
    p = parse(frag)
    assert p is not None and p[0] == FRAGMENT


def test_parse_rejects_garbage() -> None:
    assert parse(b"") is None
    assert parse(b"\x45" + b"\x00" * 10) is None
    assert parse(b"\x00" * 40) is None  # version 0
    assert parse(tcp(A, ME, 1, 2)[:30]) is None  # truncated TCP header
    assert parse(b"\x4f" + b"\x00" * 30) is None  # IHL 60 > length


# --- default policy and layers ------------------------------------------------------------------


def test_default_allow_and_default_deny() -> None:
    assert inbound(make(default_deny=False), syn_in(8080))
    f = make()
    assert not inbound(f, syn_in(8080))
    assert f.stats(T0).default_denied == 1


@pytest.mark.parametrize("layer", list(Layer))
def test_each_layer_allows_and_denies(layer: Layer) -> None:
    f = make()
    f.set_layer(layer, [Rule(port=22), Rule(port=53, protocol="udp")], now=T0)
    assert inbound(f, syn_in(22))
    assert inbound(f, udp(A, ME, 5000, 53))
    assert not inbound(f, udp(A, ME, 5000, 22))  # tcp rule does not open udp
    g = make(default_deny=False)
    g.set_layer(layer, [Rule(port=22, action="deny")], now=T0)
    assert not inbound(g, syn_in(22))
    assert inbound(g, syn_in(23))


@pytest.mark.parametrize("deny_layer", list(Layer))
@pytest.mark.parametrize("allow_layer", list(Layer))
def test_deny_in_any_layer_beats_allow_in_any_layer(deny_layer: Layer, allow_layer: Layer) -> None:
    f = make(default_deny=False)
    f.add_rule(allow_layer, Rule(port=5432, source_peer="alpha"), now=T0)
    f.add_rule(deny_layer, Rule(port=5432, action="deny"), now=T0)
    assert not inbound(f, syn_in(5432), "alpha")


def test_same_key_in_one_layer_replaces() -> None:
    f = make()
    f.add_rule(Layer.RUNTIME, Rule(port=80, action="deny"), now=T0)
    f.add_rule(Layer.RUNTIME, Rule(port=80, action="allow"), now=T0)
    assert inbound(f, syn_in(80))
    assert len(f.layer_rules(Layer.RUNTIME)) == 1


def test_set_layer_replaces_the_whole_layer() -> None:
    f = make()
    f.set_layer(Layer.COORDINATOR, [Rule(port=80), Rule(port=81)], now=T0)
    f.set_layer(Layer.COORDINATOR, [Rule(port=81)], now=T0)
    assert not inbound(f, syn_in(80))
    assert inbound(f, syn_in(81, sport=40001))


# --- per-peer rules -------------------------------------------------------------------------------


def test_per_peer_allow_and_deny() -> None:
    f = make()
    f.add_rule(Layer.CONFIG, Rule(port=22, source_peer="alpha"), now=T0)
    assert inbound(f, syn_in(22, A), "alpha")
    assert not inbound(f, syn_in(22, B), "beta")

    g = make(default_deny=False)
    g.add_rule(Layer.CONFIG, Rule(port=3306, action="deny", source_peer="beta"), now=T0)
    g.add_rule(Layer.CONFIG, Rule(port=3306), now=T0)
    assert inbound(g, syn_in(3306, A), "alpha")
    assert not inbound(g, syn_in(3306, B), "beta")


def test_counters_go_to_the_deciding_rule() -> None:
    f = make()
    f.add_rule(Layer.CONFIG, Rule(port=22), now=T0)
    f.add_rule(Layer.RUNTIME, Rule(port=22, action="deny", source_peer="beta"), now=T0)
    assert inbound(f, syn_in(22, A), "alpha")
    assert inbound(f, tcp(A, ME, 40000, 22, ACK), "alpha")  # tracked, still this rule's
    assert not inbound(f, syn_in(22, B), "beta")
    rows = {(r.layer, r.source_peer): (r.allowed, r.denied) for r in f.stats(T0).rules}
    assert rows == {("config", ""): (2, 0), ("runtime", "beta"): (0, 1)}


# --- TTL -----------------------------------------------------------------------------------------


def test_ttl_rule_expires_by_now() -> None:
    f = make()
    f.add_rule(Layer.RUNTIME, Rule(port=8080, expires=T0 + 60), now=T0)
    assert inbound(f, syn_in(8080), now=T0 + 59)
    assert not inbound(f, syn_in(8080, sport=40001), now=T0 + 60)
    assert f.layer_rules(Layer.RUNTIME) == []
    assert f.stats(T0 + 60).rules == []


def test_expired_deny_lets_flows_through_again() -> None:
    f = make(default_deny=False)
    f.add_rule(Layer.RUNTIME, Rule(port=25, action="deny", expires=T0 + 10), now=T0)
    assert not inbound(f, syn_in(25), now=T0 + 1)
    assert inbound(f, syn_in(25), now=T0 + 11)


def test_expire_sweeps_rules_and_flows() -> None:
    f = make(timeouts=Timeouts(udp=5))
    f.add_rule(Layer.RUNTIME, Rule(port=1, expires=T0 + 1), now=T0)
    assert outbound(f, udp(ME, A, 4000, 53))
    assert len(f.conntrack) == 1
    f.expire(T0 + 6)
    assert len(f.conntrack) == 0 and f.layer_rules(Layer.RUNTIME) == []


# --- stateful: replies pass ------------------------------------------------------------------------


def test_udp_replies_pass_under_default_deny() -> None:
    f = make()
    assert outbound(f, udp(ME, A, 40000, 53))
    assert inbound(f, udp(A, ME, 53, 40000))
    # Not from the peer we sent to, or to another port: dropped.
    assert not inbound(f, udp(A, ME, 53, 40000), "beta")
    assert not inbound(f, udp(A, ME, 53, 40001))
    assert not inbound(f, udp(A, ME, 54, 40000))


def test_udp_flow_times_out_unless_replied() -> None:
    f = make(timeouts=Timeouts(udp=30, udp_replied=120))
    outbound(f, udp(ME, A, 40000, 53), now=T0)
    assert not inbound(f, udp(A, ME, 53, 40000), now=T0 + 31)
    outbound(f, udp(ME, A, 40001, 53), now=T0)
    assert inbound(f, udp(A, ME, 53, 40001), now=T0 + 29)  # replied: now lives 120 s
    assert inbound(f, udp(A, ME, 53, 40001), now=T0 + 29 + 119)


def test_tcp_replies_pass_and_only_syn_opens_outbound_state() -> None:
    f = make()
    assert outbound(f, tcp(ME, A, 40000, 443, SYN))
    assert inbound(f, tcp(A, ME, 443, 40000, SYN | ACK))
    assert outbound(f, tcp(ME, A, 40000, 443, ACK))
    assert inbound(f, tcp(A, ME, 443, 40000, ACK))
    # A bare outbound ACK does not open a hole for "replies".
    assert outbound(f, tcp(ME, A, 40001, 443, ACK))
    assert not inbound(f, tcp(A, ME, 443, 40001, ACK))


def test_tcp_reset_and_fin_shorten_the_flow() -> None:
    t = Timeouts(tcp_reset=10, tcp_closing=120, tcp_established=3600)
    f = make(timeouts=t)
    outbound(f, tcp(ME, A, 40000, 443, SYN), now=T0)
    inbound(f, tcp(A, ME, 443, 40000, SYN | ACK), now=T0)
    inbound(f, tcp(A, ME, 443, 40000, RST), now=T0)
    assert not inbound(f, tcp(A, ME, 443, 40000, ACK), now=T0 + 11)
    outbound(f, tcp(ME, A, 40002, 443, SYN), now=T0)
    inbound(f, tcp(A, ME, 443, 40002, SYN | ACK), now=T0)
    assert inbound(f, tcp(A, ME, 443, 40002, ACK), now=T0 + 3000)
    outbound(f, tcp(ME, A, 40002, 443, FIN | ACK), now=T0 + 3000)
    assert inbound(f, tcp(A, ME, 443, 40002, FIN | ACK), now=T0 + 3100)
    assert not inbound(f, tcp(A, ME, 443, 40002, ACK), now=T0 + 3221)


def test_ipv6_flows() -> None:
    f = make()
    f.add_rule(Layer.CONFIG, Rule(port=22), now=T0)
    assert inbound(f, tcp(A6, ME6, 40000, 22, SYN))
    assert not inbound(f, tcp(A6, ME6, 40000, 23, SYN))
    assert outbound(f, udp(ME6, A6, 40000, 53))
    assert inbound(f, udp(A6, ME6, 53, 40000))


def test_another_peer_cannot_take_over_a_flow() -> None:
    f = make(default_deny=False)
    outbound(f, udp(ME, A, 40000, 53), "alpha")
    assert inbound(f, udp(A, ME, 53, 40000), "beta")  # default allow, but untracked
    f.configure(default_deny=True)
    assert inbound(f, udp(A, ME, 53, 40000), "alpha")  # alpha's entry is intact


# --- a deny on a live flow -----------------------------------------------------------------------


def test_runtime_deny_cuts_a_live_tcp_flow_both_ways_and_remove_restores_it() -> None:
    f = make()
    f.add_rule(Layer.CONFIG, Rule(port=8080), now=T0)
    assert inbound(f, syn_in(8080), now=T0)
    assert outbound(f, tcp(ME, A, 8080, 40000, SYN | ACK), now=T0)
    assert inbound(f, tcp(A, ME, 40000, 8080, ACK), now=T0)
    f.add_rule(Layer.RUNTIME, Rule(port=8080, action="deny", source_peer="alpha"), now=T0 + 1)
    assert not inbound(f, tcp(A, ME, 40000, 8080, ACK), now=T0 + 1)
    assert not outbound(f, tcp(ME, A, 8080, 40000, ACK), now=T0 + 1)
    # Our side's packets do not turn the flow into an outbound one that passes "replies".
    assert not inbound(f, tcp(A, ME, 40000, 8080, ACK), now=T0 + 2)
    f.remove_rule(Layer.RUNTIME, "tcp", 8080, "alpha", now=T0 + 3)
    assert inbound(f, tcp(A, ME, 40000, 8080, ACK), now=T0 + 3)
    assert outbound(f, tcp(ME, A, 8080, 40000, ACK), now=T0 + 3)


def test_deny_on_a_live_udp_flow() -> None:
    f = make(default_deny=False)
    assert inbound(f, udp(A, ME, 5000, 9999))
    assert outbound(f, udp(ME, A, 9999, 5000))
    f.add_rule(Layer.RUNTIME, Rule(port=9999, protocol="udp", action="deny"), now=T0)
    assert not inbound(f, udp(A, ME, 5000, 9999))
    assert not outbound(f, udp(ME, A, 9999, 5000))


def test_deny_does_not_touch_flows_we_opened() -> None:
    f = make()
    outbound(f, udp(ME, A, 53, 53))  # our port 53 to their 53
    f.add_rule(Layer.RUNTIME, Rule(port=53, protocol="udp", action="deny"), now=T0)
    assert inbound(f, udp(A, ME, 53, 53))


def test_switching_to_default_deny_rechecks_flows_admitted_by_default() -> None:
    f = make(default_deny=False)
    assert inbound(f, syn_in(7000))
    f.configure(default_deny=True)
    assert not inbound(f, tcp(A, ME, 40000, 7000, ACK))


# --- ICMP and other protocols --------------------------------------------------------------------


def test_icmp_allowed_by_config() -> None:
    assert inbound(make(allow_icmp=True), icmp(A, ME, 8))
    f = make(allow_icmp=False)
    assert not inbound(f, icmp(A, ME, 8))
    assert f.stats(T0).icmp_denied == 1


def test_echo_replies_to_our_pings_pass_when_icmp_is_off() -> None:
    f = make(allow_icmp=False)
    assert outbound(f, icmp(ME, A, 8, ident=77))
    assert inbound(f, icmp(A, ME, 0, ident=77))
    assert not inbound(f, icmp(A, ME, 0, ident=78))
    assert outbound(f, icmp(ME6, A6, 128, ident=5))
    assert inbound(f, icmp(A6, ME6, 129, ident=5))


def test_icmp_errors_about_our_flows_pass_when_icmp_is_off() -> None:
    f = make(allow_icmp=False)
    sent = udp(ME, A, 40000, 9)
    outbound(f, sent)
    assert inbound(f, icmp_error(A, ME, 3, sent))
    assert not inbound(f, icmp_error(A, ME, 3, udp(ME, A, 40001, 9)))
    sent6 = tcp(ME6, A6, 40000, 443, SYN)
    outbound(f, sent6)
    assert inbound(f, icmp_error(A6, ME6, 2, sent6))  # packet too big


def test_other_protocols_follow_the_default_and_garbage_is_dropped() -> None:
    from tunnelmesh.filter.craft import ip

    gre = ip(A, ME, 47, b"\x00" * 8)
    assert inbound(make(default_deny=False), gre)
    assert not inbound(make(), gre)
    f = make(default_deny=False)
    assert not inbound(f, b"\x00" * 10)
    assert f.stats(T0).malformed == 1
    assert outbound(f, b"\x00" * 10)  # outbound is never filtered


def test_non_first_fragments_pass() -> None:
    assert inbound(make(), fragment(udp(A, ME, 1, 9999), 10))


# --- the table ---------------------------------------------------------------------------------


def test_conntrack_is_bounded_and_evicts_oldest() -> None:
    f = make(max_flows=100)
    for port in range(1000, 1200):
        outbound(f, udp(ME, A, port, 53))
    assert len(f.conntrack) == 100
    assert f.stats(T0).evicted == 100
    assert inbound(f, udp(A, ME, 53, 1199))
    assert not inbound(f, udp(A, ME, 53, 1000))


def test_full_table_prefers_expired_entries() -> None:
    f = make(max_flows=10, timeouts=Timeouts(udp=5))
    for port in range(10):
        outbound(f, udp(ME, A, 2000 + port, 53), now=T0)
    outbound(f, udp(ME, A, 3000, 53), now=T0 + 6)
    assert len(f.conntrack) == 1 and f.conntrack.evicted == 0


def test_a_thousand_rules_decide_like_ten() -> None:
    f = make()
    f.set_layer(Layer.CONFIG, [Rule(port=p) for p in range(1000, 2000)], now=T0)
    f.set_layer(Layer.COORDINATOR, [Rule(port=p, action="deny") for p in range(1500, 1510)], now=T0)
    assert inbound(f, syn_in(1000))
    assert inbound(f, syn_in(1999))
    assert not inbound(f, syn_in(1505))
    assert not inbound(f, syn_in(2000))


def test_batches_give_one_verdict_per_packet() -> None:
    f = make()
    f.add_rule(Layer.CONFIG, Rule(port=22), now=T0)
    batch = [syn_in(22), syn_in(23), b"junk", syn_in(22, sport=1)]
    assert f.verdicts(batch, "alpha", True, now=T0) == [True, False, False, True]


def test_rule_validation() -> None:
    with pytest.raises(ValueError):
        Rule(port=0)
    with pytest.raises(ValueError):
        Rule(port=1, protocol="icmp")  # type: ignore[arg-type]
