"""The peer-side peer table (sans-IO): push messages in, change events out."""

from __future__ import annotations

from tunnelmesh.control.messages import (
    PeerGone,
    PeerInfo,
    PeerUpserted,
    Rendezvous,
    Snapshot,
    decode_push,
    encode,
)
from tunnelmesh.control.peertable import (
    PeerAdded,
    PeerChanged,
    PeerRemoved,
    PeerTable,
    RendezvousRequested,
    SelfRemoved,
)


def peer(pid: str, name: str, **kw: object) -> PeerInfo:
    return PeerInfo(
        name=name,
        peer_id=pid,
        public_key=f"ssh-ed25519 {pid}",
        wg_public_key="k",
        mesh_ip=f"172.30.0.{int(pid, 16) % 250 + 1}",
        **kw,
    )  # type: ignore[arg-type]


def test_snapshot_adds_all_but_self() -> None:
    t = PeerTable("01")
    changes = t.apply(
        Snapshot(peers=[peer("01", "me"), peer("02", "a"), peer("03", "b")], revision=3)
    )
    assert [type(c) for c in changes] == [PeerAdded, PeerAdded]
    assert set(t.peers) == {"02", "03"}
    assert t.me is not None and t.me.name == "me"


def test_second_snapshot_is_diffed() -> None:
    t = PeerTable("01")
    t.apply(Snapshot(peers=[peer("02", "a"), peer("03", "b")], revision=1))
    changes = t.apply(
        Snapshot(
            peers=[peer("02", "a"), peer("04", "c"), peer("03", "b", endpoints=["192.0.2.1:1"])],
            revision=5,
        )
    )
    kinds = sorted(type(c).__name__ for c in changes)
    assert kinds == ["PeerAdded", "PeerChanged"]
    changes = t.apply(Snapshot(peers=[peer("04", "c")], revision=6))
    assert sorted(c.peer.name for c in changes if isinstance(c, PeerRemoved)) == ["a", "b"]


def test_counters_alone_are_not_a_change() -> None:
    t = PeerTable("01", [peer("02", "a")])
    from tunnelmesh.control.messages import Counters

    assert (
        t.apply(PeerUpserted(peer=peer("02", "a", counters=Counters(bytes_sent=9)), revision=2))
        == []
    )
    ch = t.apply(PeerUpserted(peer=peer("02", "a", online=True), revision=3))
    assert len(ch) == 1 and isinstance(ch[0], PeerChanged) and not ch[0].previous.online


def test_gone_and_self_gone() -> None:
    t = PeerTable("01", [peer("02", "a")])
    assert [type(c) for c in t.apply(PeerGone(peer_id="02", name="a", revision=2))] == [PeerRemoved]
    assert t.apply(PeerGone(peer_id="02", name="a", revision=3)) == []
    assert t.apply(PeerGone(peer_id="01", name="me", revision=4)) == [SelfRemoved("me")]


def test_rendezvous_event() -> None:
    t = PeerTable("01")
    ch = t.apply(Rendezvous(from_peer="a", peer_id="02", endpoints=["192.0.2.1:5"]))
    assert ch == [RendezvousRequested("a", "02", ("192.0.2.1:5",))]


def test_push_messages_roundtrip_as_json() -> None:
    msgs = [
        Snapshot(peers=[peer("02", "a")], revision=1),
        PeerUpserted(peer=peer("03", "b"), revision=2),
        PeerGone(peer_id="03", name="b", revision=3),
        Rendezvous(from_peer="a", peer_id="02", endpoints=[]),
    ]
    for m in msgs:
        assert decode_push(encode(m)) == m
