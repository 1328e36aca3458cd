"""RFC 5389 STUN codec and responder, sans-IO (no sockets)."""

from __future__ import annotations

import struct

import pytest
from tunnelmesh import stun

# RFC 5769 section 2.2: sample IPv4 response (MESSAGE-INTEGRITY, FINGERPRINT).
RFC5769_V4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)


def test_rfc5769_ipv4_response_vector() -> None:
    msg = stun.parse(RFC5769_V4_RESPONSE)
    assert msg.msg_type == stun.BINDING_SUCCESS
    assert msg.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert stun.mapped_address(msg) == ("192.0.2.1", 32853)
    assert msg.get(0x8022) == b"test vector"


def test_fingerprint_mismatch_rejected() -> None:
    bad = RFC5769_V4_RESPONSE[:-1] + bytes([RFC5769_V4_RESPONSE[-1] ^ 1])
    with pytest.raises(stun.StunParseError, match="FINGERPRINT"):
        stun.parse(bad)


@pytest.mark.parametrize("addr", [("203.0.113.7", 40000), ("2001:db8::1", 3478), ("0.0.0.0", 0)])
def test_request_response_roundtrip(addr: tuple[str, int]) -> None:
    responder = stun.StunResponder()
    request, tid = stun.binding_request(b"\x01" * 12, software="t")
    answer = responder.handle(request, addr)
    assert answer is not None
    msg = stun.parse(answer)
    assert msg.transaction_id == tid == b"\x01" * 12
    assert stun.mapped_address(msg) == addr
    assert responder.requests == 1 and responder.malformed == 0


def test_answer_has_plain_mapped_address_for_rfc3489_clients() -> None:
    answer = stun.StunResponder().handle(stun.binding_request()[0], ("198.51.100.9", 1234))
    assert answer is not None
    msg = stun.parse(answer)
    without_xor = stun.StunMessage(
        msg.msg_type, msg.transaction_id, tuple(a for a in msg.attributes if a[0] != 0x0020)
    )
    assert stun.mapped_address(without_xor) == ("198.51.100.9", 1234)


def test_request_without_fingerprint_is_answered() -> None:
    request, _ = stun.binding_request(fingerprint=False)
    assert len(request) == 20
    assert stun.StunResponder().handle(request, ("192.0.2.1", 1)) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 19,
        b"GET / HTTP/1.1\r\n\r\n....",
        # top bits set
        struct.pack("!HHI12s", 0xC001, 0, stun.MAGIC_COOKIE, b"\x00" * 12),
        # wrong cookie
        struct.pack("!HHI12s", 0x0001, 0, 0x12345678, b"\x00" * 12),
        # length not a multiple of 4
        struct.pack("!HHI12s", 0x0001, 2, stun.MAGIC_COOKIE, b"\x00" * 12) + b"\x00\x00",
        # length larger than the datagram
        struct.pack("!HHI12s", 0x0001, 8, stun.MAGIC_COOKIE, b"\x00" * 12),
        # attribute running past the end
        struct.pack("!HHI12s", 0x0001, 4, stun.MAGIC_COOKIE, b"\x00" * 12)
        + struct.pack("!HH", 0x8022, 40),
    ],
)
def test_malformed_is_counted_and_dropped(data: bytes) -> None:
    responder = stun.StunResponder()
    assert responder.handle(data, ("192.0.2.1", 1)) is None
    assert responder.malformed == 1 and responder.requests == 0


def test_non_requests_are_ignored() -> None:
    responder = stun.StunResponder()
    answer = responder.handle(stun.binding_request()[0], ("192.0.2.1", 5))
    assert answer is not None
    assert responder.handle(answer, ("192.0.2.1", 5)) is None  # a response is not answered
    indication = stun.encode(stun.StunMessage(stun.BINDING_INDICATION, b"\x02" * 12))
    assert responder.handle(indication, ("192.0.2.1", 5)) is None
    assert responder.ignored == 2


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    req = stun.encode(
        stun.StunMessage(stun.BINDING_REQUEST, b"\x03" * 12, ((0x0024, b"\x00\x00\x00\x01"),))
    )
    responder = stun.StunResponder()
    answer = responder.handle(req, ("192.0.2.1", 5))
    assert answer is not None
    msg = stun.parse(answer)
    assert msg.msg_type == stun.BINDING_ERROR
    err = msg.get(0x0009)
    assert err is not None and err[2] * 100 + err[3] == 420
    assert msg.get(0x000A) == b"\x00\x24"
    assert responder.errors == 1


def test_change_request_without_flags_is_accepted() -> None:
    req = stun.encode(
        stun.StunMessage(stun.BINDING_REQUEST, b"\x04" * 12, ((0x0003, b"\x00\x00\x00\x00"),))
    )
    answer = stun.StunResponder().handle(req, ("192.0.2.1", 7))
    assert answer is not None and stun.parse(answer).msg_type == stun.BINDING_SUCCESS


def test_is_stun() -> None:
    assert stun.is_stun(stun.binding_request()[0])
    assert not stun.is_stun(b"\x01" * 40)
