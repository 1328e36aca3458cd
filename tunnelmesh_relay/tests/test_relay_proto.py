"""The relay's wire format, WireGuard-only check, token bucket and hub accounting (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunnelmesh_relay.proto import (
    RECV,
    SEND,
    RelayFormatError,
    TokenBucket,
    count_records,
    decode_header,
    encode_message,
    encode_sealed,
    rewrite_for_delivery,
    split_records,
)
from tunnelmesh_relay.server import RelayConfig, RelayHub, _Conn

DATA = bytes((4, 0, 0, 0)) + bytes(12) + bytes(16)  # the smallest transport message (keepalive)
INIT = bytes((1, 0, 0, 0)) + bytes(144)


def test_roundtrip_and_rewrite() -> None:
    msg = encode_message(SEND, "bob", [DATA, INIT, DATA + bytes(1400)])
    kind, name, off = decode_header(msg)
    assert (kind, name) == (SEND, "bob")
    assert split_records(msg, off) == [DATA, INIT, DATA + bytes(1400)]
    out = rewrite_for_delivery(msg, off, "alice")
    kind, name, off2 = decode_header(out)
    assert (kind, name) == (RECV, "alice")
    assert out[off2:] == msg[off:]  # records are forwarded untouched


@pytest.mark.parametrize(
    "record",
    [
        b"\x45\x00\x00\x14" + bytes(28),  # a plain IPv4 header
        bytes((4, 1, 0, 0)) + bytes(28),  # reserved bytes not zero
        bytes((1, 0, 0, 0)) + bytes(100),  # an initiation of the wrong size
        bytes((4, 0, 0, 0)) + bytes(20),  # shorter than any transport message
        bytes((9, 0, 0, 0)) + bytes(60),  # unknown type
        b"\x04",
    ],
)
def test_only_wireguard_messages_pass(record: bytes) -> None:
    msg = encode_message(SEND, "bob", [DATA, record])
    _, _, off = decode_header(msg)
    with pytest.raises(RelayFormatError):
        split_records(msg, off)
    assert split_records(msg, off, wireguard=False)[1] == record


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01", b"\x07\x03bob", b"\x01\x05bob", b"\x01\x02\xff\xfe", b"\x01\x03bob\x00"],
)
def test_malformed_messages_raise_format_errors(data: bytes) -> None:
    with pytest.raises(RelayFormatError):
        _, _, off = decode_header(data)
        split_records(data, off)


def test_names_are_checked() -> None:
    with pytest.raises(RelayFormatError):
        encode_message(SEND, "", [DATA])
    with pytest.raises(RelayFormatError):
        encode_message(SEND, "x" * 256, [DATA])


def test_token_bucket() -> None:
    b = TokenBucket(rate=1000, burst=1500, now=0.0)
    assert b.take(1500, 0.0)
    assert not b.take(1, 0.0)
    assert not b.take(600, 0.5)  # 500 refilled
    assert b.take(500, 0.5)
    assert b.take(1500, 10.0)  # capped at the burst
    assert not b.take(1, 10.0)
    assert not TokenBucket(1000, 100, 0.0).take(101, 100.0)  # larger than the bucket: never
    assert TokenBucket(0, 0, 0.0).take(10**9, 0.0)  # rate 0: unlimited


def hub_with(names: list[str], *, rate: int = 0, burst: int = 0, queue: int = 8) -> RelayHub:
    now = [0.0]
    hub = RelayHub(
        RelayConfig(rate_bytes_per_second=rate, burst_bytes=burst, queue=queue),
        clock=lambda: now[0],
    )
    for n in names:
        hub.conns[n] = _Conn(n, None, queue)  # type: ignore[arg-type]
    hub.now = now  # type: ignore[attr-defined]
    return hub


def test_hub_forwards_and_counts() -> None:
    hub = hub_with(["a", "b"])
    seen: list[tuple[str, str, bytes]] = []
    hub.tap = lambda s, d, m: seen.append((s, d, m))
    msg = encode_message(SEND, "b", [DATA, DATA])
    hub.forward("a", msg)
    out = hub.conns["b"].queue.get_nowait()
    assert out == rewrite_for_delivery(msg, 3, "a")
    assert seen == [("a", "b", out)]
    a, b = hub.counters["a"], hub.counters["b"]
    assert (a.rx_bytes, a.rx_messages, a.rx_packets) == (len(msg), 1, 2)
    assert (b.tx_bytes, b.tx_messages) == (len(out), 1)


def test_hub_drops_invalid_unreachable_and_overflow() -> None:
    hub = hub_with(["a", "b"], queue=2)
    hub.forward("a", encode_message(SEND, "b", [b"\x45" + bytes(40)]))
    hub.forward("a", encode_message(RECV, "b", [DATA]))
    assert hub.counters["a"].dropped_invalid == 2
    hub.forward("a", encode_message(SEND, "nobody", [DATA]))
    hub.forward("a", encode_message(SEND, "nobody", [DATA]))
    assert hub.counters["a"].dropped_unreachable == 2
    # one UNREACHED notice per second and destination
    notices = [hub.conns["a"].queue.get_nowait() for _ in range(hub.conns["a"].queue.qsize())]
    assert [decode_header(n)[:2] for n in notices] == [(0x03, "nobody")]
    for _ in range(3):
        hub.forward("a", encode_message(SEND, "b", [DATA]))
    assert hub.counters["b"].dropped_queue == 1
    assert hub.counters["b"].tx_messages == 2


def test_hub_rate_limits_each_sender() -> None:
    hub = hub_with(["a", "b", "c"], rate=1000, burst=1000, queue=100)
    msg = encode_message(SEND, "c", [DATA + bytes(400)])  # ~440 bytes
    results = []
    for _ in range(4):
        before = hub.counters_for("a").dropped_rate
        hub.forward("a", msg)
        results.append(hub.counters["a"].dropped_rate == before)
    assert results == [True, True, False, False]
    hub.forward("b", msg)  # another sender has its own bucket
    assert hub.counters["b"].dropped_rate == 0
    hub.now[0] = 1.0  # type: ignore[attr-defined]
    hub.forward("a", msg)
    assert hub.counters["a"].dropped_rate == 2
    assert hub.counters["a"].rx_messages == 3


def test_stats_are_plain_data() -> None:
    hub = hub_with(["a"])
    hub.forward("a", encode_message(SEND, "zed", [DATA]))
    stats = hub.stats()
    assert stats["connected"] == ["a"]
    assert stats["peers"]["a"]["dropped_unreachable"] == 1
    assert stats["config"]["rate_bytes_per_second"] == 0


def test_count_records_agrees_with_split_records() -> None:
    good = encode_message(
        SEND, "bob", [DATA, INIT, DATA + bytes(1400), bytes((3, 0, 0, 0)) + bytes(60)]
    )
    _, _, off = decode_header(good)
    assert count_records(good, off) == len(split_records(good, off)) == 4
    for record in (b"\x45" + bytes(40), bytes((4, 0, 1, 0)) + bytes(28), b"\x04\x00", bytes(5)):
        bad = encode_message(SEND, "bob", [DATA, record])
        with pytest.raises(RelayFormatError):
            count_records(bad, off)
    with pytest.raises(RelayFormatError):
        count_records(good[:-1], off)


_RECORDS = st.lists(
    st.one_of(
        st.sampled_from([DATA, INIT, DATA + bytes(1400), bytes((3, 0, 0, 0)) + bytes(60)]),
        st.binary(max_size=40),
    ),
    max_size=5,
)


@given(records=_RECORDS, tail=st.binary(max_size=7))
def test_count_split_and_views_agree_on_any_message(records: list[bytes], tail: bytes) -> None:
    """The hub's count, the peer's split and its zero-copy views accept and refuse the same
    messages (a trailing partial record included), and the views hold the same bytes."""
    msg = encode_message(SEND, "bob", records) + tail
    _, _, off = decode_header(msg)
    outcomes = []
    for check in (
        lambda: count_records(msg, off),
        lambda: len(split_records(msg, off)),
        lambda: len(split_records(msg, off, views=True)),
    ):
        try:
            outcomes.append(check())
        except RelayFormatError:
            outcomes.append(-1)
    assert len(set(outcomes)) == 1, outcomes
    if outcomes[0] >= 0:
        assert split_records(msg, off, views=True) == split_records(msg, off) == records
    plain = split_records(encode_message(SEND, "bob", records), off, wireguard=False)
    assert plain == records


@given(records=_RECORDS.filter(lambda rs: all(len(r) > 0 for r in rs)), cap=st.integers(1, 4))
def test_encode_sealed_is_encode_message_in_runs(records: list[bytes], cap: int) -> None:
    """Messages built straight from a sealing buffer are the SENDs encode_message builds, at
    most ``cap`` records each."""
    buf = bytearray(b"".join(records) + bytes(33))  # a sealing buffer is longer than its run
    got = encode_sealed("bob", buf, [len(r) for r in records], max_records=cap)
    want = [encode_message(SEND, "bob", records[i : i + cap]) for i in range(0, len(records), cap)]
    assert got == want
    buf.extend(b"x")  # no view of the buffer is left behind (it can still grow)
