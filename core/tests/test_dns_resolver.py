"""The resolver's logic and the coordinator backend, sans-IO: bytes in, bytes out."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord
from tunnelmesh._manager import make_plugin_manager
from tunnelmesh.dns import Action, CoordinatorBackend, MeshResolver


@pytest.fixture
def backend() -> CoordinatorBackend:
    return CoordinatorBackend(
        {
            "alpha": ["10.42.0.2", "fd42::2"],
            "beta.tunnelmesh": ["10.42.0.3"],
            "www.alpha": ["10.42.0.2"],
        },
        coordinators=["10.42.0.1"],
        networks=["10.42.0.0/16"],
    )


@pytest.fixture
def resolver(backend: CoordinatorBackend) -> MeshResolver:
    return MeshResolver(backend, ttl=300)


def ask(resolver: MeshResolver, name: str, qtype: str = "A") -> DNSRecord:
    result = resolver.handle(DNSRecord.question(name, qtype).pack())
    assert result.action is Action.ANSWER
    return DNSRecord.parse(result.data)


def answers(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


@pytest.mark.parametrize(
    "name", ["alpha.tunnelmesh", "ALPHA.tm", "alpha.mesh.", "Alpha.TunnelMesh"]
)
def test_a_records_under_every_mesh_domain(resolver: MeshResolver, name: str) -> None:
    reply = ask(resolver, name)
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert answers(reply) == ["10.42.0.2"]
    assert reply.rr[0].ttl == 300
    assert str(reply.q.qname).rstrip(".") == name.rstrip(".")  # the question is echoed as asked


def test_aaaa_and_nodata(resolver: MeshResolver) -> None:
    assert answers(ask(resolver, "alpha.tunnelmesh", "AAAA")) == ["fd42::2"]
    reply = ask(resolver, "beta.tunnelmesh", "AAAA")  # IPv4-only peer: NODATA, not NXDOMAIN
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []
    assert reply.auth[0].rtype == QTYPE.SOA and reply.auth[0].rdata.times[-1] == 1
    reply = ask(resolver, "beta.tunnelmesh", "MX")
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


def test_unknown_mesh_name_is_nxdomain_with_a_short_negative_ttl(resolver: MeshResolver) -> None:
    reply = ask(resolver, "nobody.tunnelmesh")
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert reply.auth[0].rtype == QTYPE.SOA and reply.auth[0].ttl == 1


def test_this_and_aliases(resolver: MeshResolver) -> None:
    assert answers(ask(resolver, "this.tm")) == ["10.42.0.1"]
    assert answers(ask(resolver, "this.tunnelmesh")) == ["10.42.0.1"]
    assert answers(ask(resolver, "www.alpha.tunnelmesh")) == ["10.42.0.2"]


def test_any_returns_both_families(resolver: MeshResolver) -> None:
    assert sorted(answers(ask(resolver, "alpha.tunnelmesh", "ANY"))) == ["10.42.0.2", "fd42::2"]


def test_zone_apex(resolver: MeshResolver) -> None:
    reply = ask(resolver, "tunnelmesh", "SOA")
    assert reply.rr[0].rtype == QTYPE.SOA
    reply = ask(resolver, "tm", "A")
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


def test_ptr_for_mesh_ips(resolver: MeshResolver) -> None:
    assert answers(ask(resolver, "3.0.42.10.in-addr.arpa", "PTR")) == ["beta.tunnelmesh."]
    assert sorted(answers(ask(resolver, "2.0.42.10.in-addr.arpa", "PTR"))) == [
        "alpha.tunnelmesh.",
        "www.alpha.tunnelmesh.",
    ]
    assert answers(ask(resolver, "1.0.42.10.in-addr.arpa", "PTR")) == ["this.tunnelmesh."]
    v6 = ".".join(reversed("fd42" + "0" * 27 + "2")) + ".ip6.arpa"
    assert answers(ask(resolver, v6, "PTR")) == ["alpha.tunnelmesh."]
    # An unknown address inside the mesh network: ours, NXDOMAIN. Outside: forwarded.
    assert ask(resolver, "99.9.42.10.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN
    result = resolver.handle(DNSRecord.question("1.1.1.1.in-addr.arpa", "PTR").pack())
    assert result.action is Action.FORWARD


def test_other_names_are_forwarded_or_refused(backend: CoordinatorBackend) -> None:
    query = DNSRecord.question("example.com").pack()
    assert MeshResolver(backend).handle(query).action is Action.FORWARD
    reply = DNSRecord.parse(MeshResolver(backend, forward=False).handle(query).data)
    assert reply.header.rcode == RCODE.REFUSED


def test_live_updates_invalidate_the_cache(
    backend: CoordinatorBackend, resolver: MeshResolver
) -> None:
    query = DNSRecord.question("gamma.tunnelmesh").pack()
    assert DNSRecord.parse(resolver.handle(query).data).header.rcode == RCODE.NXDOMAIN
    assert DNSRecord.parse(resolver.handle(query).data).header.rcode == RCODE.NXDOMAIN
    assert resolver.stats["cache_hits"] == 1
    backend.set("gamma", ["10.42.0.9"])
    assert answers(DNSRecord.parse(resolver.handle(query).data)) == ["10.42.0.9"]
    backend.remove("gamma.tunnelmesh")
    assert DNSRecord.parse(resolver.handle(query).data).header.rcode == RCODE.NXDOMAIN


def test_cached_answers_carry_the_new_query_id(resolver: MeshResolver) -> None:
    first = DNSRecord.question("alpha.tunnelmesh")
    resolver.handle(first.pack())
    again = DNSRecord.question("alpha.tunnelmesh")
    again.header.id = (first.header.id + 1) % 65536
    reply = DNSRecord.parse(resolver.handle(again.pack()).data)
    assert reply.header.id == again.header.id and answers(reply) == ["10.42.0.2"]


def test_edns_is_answered_with_edns(resolver: MeshResolver) -> None:
    query = DNSRecord.question("alpha.tunnelmesh")
    query.add_ar(EDNS0(udp_len=4096))
    reply = DNSRecord.parse(resolver.handle(query.pack()).data)
    assert any(rr.rtype == QTYPE.OPT for rr in reply.ar)


# --- bad input ----------------------------------------------------------------------------------


def test_garbage_gets_formerr_or_is_dropped(resolver: MeshResolver) -> None:
    assert resolver.handle(b"").action is Action.DROP
    assert resolver.handle(b"\x01\x02\x03").action is Action.DROP
    # A header that claims a question that is not there: FORMERR with the same ID.
    bad = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab"
    result = resolver.handle(bad)
    assert result.action is Action.ANSWER
    qid, flags = struct.unpack("!HH", result.data[:4])
    assert qid == 0xBEEF and flags & 0x8000 and flags & 0xF == RCODE.FORMERR
    # A label pointer loop.
    loop = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
    assert resolver.handle(loop).action is Action.ANSWER
    assert resolver.stats["formerr"] == 2


def test_responses_and_oversized_queries_are_dropped(resolver: MeshResolver) -> None:
    response = DNSRecord.question("alpha.tunnelmesh").reply().pack()
    assert resolver.handle(response).action is Action.DROP
    big = DNSRecord.question("alpha.tunnelmesh")
    big.add_ar(EDNS0(opts=[]))
    assert resolver.handle(big.pack() + b"\x00" * 2000).action is Action.DROP
    assert resolver.stats["dropped"] == 2


def test_wrong_question_count_and_opcode(resolver: MeshResolver) -> None:
    two = DNSRecord.question("alpha.tunnelmesh")
    two.add_question(DNSRecord.question("beta.tunnelmesh").q)
    assert DNSRecord.parse(resolver.handle(two.pack()).data).header.rcode == RCODE.FORMERR
    notify = DNSRecord.question("alpha.tunnelmesh")
    notify.header.opcode = 4
    assert DNSRecord.parse(resolver.handle(notify.pack()).data).header.rcode == RCODE.NOTIMP


def test_servfail(resolver: MeshResolver) -> None:
    query = DNSRecord.question("example.com")
    reply = DNSRecord.parse(resolver.servfail(query.pack()))
    assert reply.header.rcode == RCODE.SERVFAIL and reply.header.id == query.header.id


# --- backend feeding ------------------------------------------------------------------------------


def peer(name: str, ip: str, pid: str, coordinator: bool = False, ip6: str = "") -> SimpleNamespace:
    return SimpleNamespace(
        name=name, peer_id=pid, mesh_ip=ip, mesh_ip6=ip6, is_coordinator=coordinator
    )


def test_push_messages_drive_the_records() -> None:
    b = CoordinatorBackend(local_name="coord2")
    b.apply_push(
        SimpleNamespace(
            peers=[
                peer("coord1", "10.42.0.1", "c1", True),
                peer("coord2", "10.42.0.5", "c2", True),
            ],
            revision=1,
        )
    )
    assert b.lookup("coord1", "A") == ["10.42.0.1"]
    assert b.lookup("this", "A") == ["10.42.0.5", "10.42.0.1"]  # the local coordinator first
    b.apply_push(SimpleNamespace(peer=peer("delta", "10.42.0.7", "d", ip6="fd42::7"), revision=2))
    assert b.lookup("delta", "AAAA") == ["fd42::7"]
    b.apply_push(SimpleNamespace(peer=peer("delta2", "10.42.0.7", "d"), revision=3))  # renamed
    assert b.lookup("delta", "A") is None and b.lookup("delta2", "A") == ["10.42.0.7"]
    assert b.lookup("10.42.0.7", "PTR") == ["delta2"]
    b.apply_push(SimpleNamespace(peer_id="d", name="delta2", revision=4))
    assert b.lookup("delta2", "A") is None and b.lookup("10.42.0.7", "PTR") is None
    b.apply_push(SimpleNamespace(peer_id="c2", name="coord2", revision=5))
    assert b.lookup("this", "A") == ["10.42.0.1"]
    b.apply_push(SimpleNamespace(from_peer="x", endpoints=[]))  # other messages are ignored


def test_real_push_messages_when_the_control_package_exists() -> None:
    messages = pytest.importorskip("tunnelmesh.control.messages")
    info = messages.PeerInfo(
        name="eps", peer_id="e", public_key="k", wg_public_key="w", mesh_ip="10.42.0.8"
    )
    b = CoordinatorBackend()
    b.apply_push(messages.Snapshot(peers=[info], revision=1))
    assert b.lookup("eps", "A") == ["10.42.0.8"]
    b.apply_push(messages.PeerGone(peer_id="e", name="eps", revision=2))
    assert b.lookup("eps", "A") is None


def test_backend_rejects_bad_addresses() -> None:
    with pytest.raises(ValueError):
        CoordinatorBackend({"x": ["not-an-ip"]})


def test_builtin_plugin_registers_the_backend() -> None:
    registry = make_plugin_manager(entry_points=False).build_registry()
    assert registry.dns_backends["coordinator"] is CoordinatorBackend
    assert registry.provided_by("builtin.dns") == {"dns backend": ["coordinator"]}
    assert registry.provided_by("builtin.filter") == {"filter": ["ports"]}
