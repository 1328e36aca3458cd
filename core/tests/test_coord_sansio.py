"""Sans-IO parts of the coordinator: challenges, failure limits, allocation, names, liveness."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from tunnelmesh.coordinator.alloc import (
    AllocationError,
    IpAllocator,
    NameTaken,
    check_name,
    suffixed_name,
)
from tunnelmesh.coordinator.auth import (
    ChallengeBook,
    ChallengesExhausted,
    FailureLimiter,
    registration_message,
    token_binding,
    token_matches,
)
from tunnelmesh.coordinator.liveness import Liveness, PeerOffline, PeerOnline

# --- challenges and tokens --------------------------------------------------------------------


def _counter_random() -> ChallengeBook:
    counter = itertools.count()
    return ChallengeBook(ttl=60.0, random=lambda n: next(counter).to_bytes(n, "big"))


def test_challenge_is_single_use() -> None:
    book = _counter_random()
    nonce = book.issue(now=100.0)
    assert book.peek(nonce, 100.0)
    assert book.redeem(nonce, now=101.0)
    assert not book.redeem(nonce, now=101.0)


def test_challenge_expires() -> None:
    book = _counter_random()
    nonce = book.issue(now=100.0)
    assert not book.redeem(nonce, now=160.5)


def test_unknown_challenge_refused() -> None:
    assert not _counter_random().redeem(b"\x00" * 32, now=0.0)


def test_challenge_book_is_bounded_without_evicting_other_sources() -> None:
    # It used to forget the oldest nonce of anybody: a flood evicted genuine challenges.
    book = ChallengeBook(max_pending=3, per_source=2)
    genuine = book.issue(now=1.0, source="10.0.0.1")
    flood = [book.issue(now=1.0, source="10.6.6.6") for _ in range(2)]
    with pytest.raises(ChallengesExhausted) as err:  # its quota: refused, nothing forgotten
        book.issue(now=1.0, source="10.6.6.6")
    assert err.value.mine and err.value.retry_after == pytest.approx(60.0)
    assert len(book) == 3 and book.outstanding("10.6.6.6") == 2
    assert book.redeem(flood[0], 1.0)  # a redeemed nonce frees its slot
    flood.append(book.issue(now=1.0, source="10.6.6.6"))
    with pytest.raises(ChallengesExhausted) as err:  # full of others' nonces: refused
        book.issue(now=1.0, source="10.9.9.9")
    assert not err.value.mine
    assert book.redeem(genuine, 1.0) and book.redeem(flood[-1], 1.0)
    assert book.issue(now=62.0, source="10.9.9.9")  # the unused ones expired


def test_expired_challenges_are_forgotten_on_issue() -> None:
    book = ChallengeBook(ttl=1.0)
    book.issue(now=0.0)
    book.issue(now=10.0)
    assert len(book) == 1


def test_token_comparison() -> None:
    assert token_matches("a" * 32, "a" * 32)
    assert not token_matches("a" * 32, "a" * 31 + "b")
    assert not token_matches("a" * 32, "")


def test_signed_message_binds_every_field() -> None:
    nonce = b"n" * 32
    base = registration_message(nonce, "alpha", "ssh-ed25519 AAA", token_binding("t" * 16, nonce))
    variants = [
        registration_message(b"m" * 32, "alpha", "ssh-ed25519 AAA", token_binding("t" * 16, nonce)),
        registration_message(nonce, "alphb", "ssh-ed25519 AAA", token_binding("t" * 16, nonce)),
        registration_message(nonce, "alpha", "ssh-ed25519 AAB", token_binding("t" * 16, nonce)),
        registration_message(nonce, "alpha", "ssh-ed25519 AAA", token_binding("u" * 16, nonce)),
    ]
    assert all(v != base for v in variants)


# --- failure limiter --------------------------------------------------------------------------


def test_limiter_allows_burst_then_refills() -> None:
    lim = FailureLimiter(burst=3, per_minute=60.0)
    for _ in range(3):
        assert lim.retry_after("a", 0.0) == 0
        lim.charge("a", 0.0)
    assert lim.retry_after("a", 0.0) == pytest.approx(1.0)
    assert lim.retry_after("b", 0.0) == 0  # per source
    assert lim.retry_after("a", 1.0) == 0  # one failure per second refills


def test_limiter_zero_rate_blocks_for_good() -> None:
    lim = FailureLimiter(burst=1, per_minute=0.0)
    lim.charge("a", 0.0)
    assert lim.retry_after("a", 1e9) == float("inf")


def test_limiter_is_bounded() -> None:
    lim = FailureLimiter(burst=1, per_minute=1.0, max_sources=10)
    for i in range(100):
        lim.charge(f"s{i}", 0.0)
    assert len(lim._buckets) == 10


# --- IP allocation ----------------------------------------------------------------------------


def test_same_key_same_ip_across_allocators() -> None:
    a = IpAllocator("172.30.0.0/16")
    b = IpAllocator("172.30.0.0/16")
    assert a.allocate(b"key-1") == b.allocate(b"key-1") == a.preferred(b"key-1")


def test_collision_probes_forward_and_never_shares() -> None:
    alloc = IpAllocator("10.9.0.0/29")  # 6 usable hosts
    got = {alloc.allocate(f"k{i}".encode()) for i in range(6)}
    assert len(got) == 6
    net = ipaddress.ip_network("10.9.0.0/29")
    assert net.network_address not in got and net.broadcast_address not in got
    with pytest.raises(AllocationError):
        alloc.allocate(b"one too many")


def test_release_frees_the_address() -> None:
    alloc = IpAllocator("10.9.0.0/30")  # 2 usable hosts
    a = alloc.allocate(b"a")
    alloc.allocate(b"b")
    alloc.release(str(a))
    assert alloc.allocate(b"c") == a


def test_loaded_addresses_are_not_reused() -> None:
    first = IpAllocator("172.30.0.0/16").allocate(b"k")
    alloc = IpAllocator("172.30.0.0/16", used=[str(first)])
    assert alloc.allocate(b"k") != first
    assert alloc.contains(str(first)) and not alloc.contains("10.0.0.1")
    assert not alloc.contains("172.30.0.0")


def test_reserved_addresses_are_skipped() -> None:
    alloc = IpAllocator("10.9.0.0/30", reserved=["10.9.0.1"])
    assert str(alloc.allocate(b"a")) == "10.9.0.2"
    assert alloc.capacity == 1


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alpha", "a", "node-7", "x" * 63])
def test_good_names(name: str) -> None:
    assert check_name(name) is None


@pytest.mark.parametrize("name", ["", "Alpha", "-a", "a-", "a.b", "a_b", "x" * 64, "é"])
def test_bad_names(name: str) -> None:
    assert "DNS label" in (check_name(name) or "")


@pytest.mark.parametrize("name", ["this", "admin", "api", "coordinator"])
def test_reserved_names(name: str) -> None:
    assert "reserved" in (check_name(name) or "")


def test_suffixed_name() -> None:
    taken = {"web", "web-2"}
    assert suffixed_name("web", lambda n: n not in taken) == "web-3"
    assert suffixed_name("db", lambda n: n not in taken) == "db"
    long = "x" * 63
    result = suffixed_name(long, lambda n: n != long)
    assert result.endswith("-2") and len(result) == 63
    with pytest.raises(NameTaken):
        suffixed_name("a", lambda n: False, limit=5)


# --- liveness ---------------------------------------------------------------------------------


def test_liveness_online_offline_online() -> None:
    live = Liveness(interval=10.0, misses=3)
    assert live.seen("p", now=0.0) == [PeerOnline("p")]
    assert live.seen("p", now=10.0) == []
    assert live.poll(now=39.9) == []
    assert live.next_deadline() == 40.0
    assert live.poll(now=40.0) == [PeerOffline("p", 10.0)]
    assert not live.is_online("p")
    assert live.poll(now=100.0) == []
    assert live.seen("p", now=101.0) == [PeerOnline("p")]


def test_liveness_heartbeats_keep_peer_online() -> None:
    live = Liveness(interval=1.0, misses=3)
    for t in range(100):
        live.seen("p", float(t))
        assert live.poll(float(t)) == []
    assert live.is_online("p")


def test_liveness_a_second_hand_time_never_takes_a_peer_offline_by_itself() -> None:
    """``observe``: another coordinator's stored heartbeat. A recent one brings the peer
    online; an expired one moves ``last_seen`` only: ``poll`` takes the peer offline."""
    live = Liveness(interval=10.0, misses=3)
    assert live.observe("p", last_seen=95.0, now=100.0) == [PeerOnline("p")]
    assert live.observe("p", last_seen=96.0, now=200.0) == []  # expired: online still
    assert live.is_online("p") and live.last_seen("p") == 96.0
    assert live.poll(200.0) == [PeerOffline("p", 96.0)]
    assert live.observe("q", last_seen=10.0, now=200.0) == []  # unknown, expired: offline
    assert not live.is_online("q") and live.poll(1000.0) == []
    assert live.observe("q", last_seen=995.0, now=1000.0) == [PeerOnline("q")]


def test_liveness_forget_and_restore() -> None:
    live = Liveness(interval=10.0)
    live.seen("gone", 0.0)
    live.forget("gone")
    assert live.poll(1000.0) == []
    live.restore("recent", last_seen=95.0, now=100.0)
    live.restore("old", last_seen=10.0, now=100.0)
    assert live.is_online("recent") and not live.is_online("old")
    assert live.poll(125.0) == [PeerOffline("recent", 95.0)]
    assert live.next_deadline() is None
