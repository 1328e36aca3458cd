"""A sans-IO codec for STUN (RFC 5389) Binding, enough to serve and query reflexive addresses.

Nothing here touches a socket or a clock. The coordinator's UDP driver
(:mod:`tunnelmesh.coordinator.stun_server`) feeds datagrams to :class:`StunResponder` and sends
back what it returns; a peer builds a request with :func:`binding_request`, sends it from the
socket whose public mapping it wants to learn, and reads the answer with :func:`parse` and
:func:`mapped_address`.

Message layout (RFC 5389 section 6)::

     0                   1                   2                   3
    |0 0|     STUN Message Type     |         Message Length        |
    |                         Magic Cookie 0x2112A442               |
    |                     Transaction ID (96 bits)                  |
    |  attributes: type (16) | length (16) | value, padded to 4 bytes ...

Rules kept here:

* A datagram that is not well-formed STUN never raises out of :meth:`StunResponder.handle`: it
  is counted in ``malformed`` and dropped (no answer), as section 7.3 asks.
* A Binding request with an unknown comprehension-required attribute (type < 0x8000) gets a
  420 error naming it; CHANGE-REQUEST with no flags set (RFC 5780 clients) is accepted.
* Answers carry XOR-MAPPED-ADDRESS, MAPPED-ADDRESS (for RFC 3489 clients), SOFTWARE and
  FINGERPRINT. A FINGERPRINT on a request is checked when present.
"""

from __future__ import annotations

import binascii
import ipaddress
import os
import struct
from dataclasses import dataclass, field

from tunnelmesh.errors import RemoteProtocolError

__all__ = [
    "BINDING_ERROR",
    "BINDING_REQUEST",
    "BINDING_SUCCESS",
    "MAGIC_COOKIE",
    "StunMessage",
    "StunParseError",
    "StunResponder",
    "binding_request",
    "encode",
    "is_stun",
    "mapped_address",
    "parse",
]

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
HEADER = struct.Struct("!HHI12s")

BINDING_REQUEST = 0x0001
BINDING_INDICATION = 0x0011
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_CHANGE_REQUEST = 0x0003
ATTR_ERROR_CODE = 0x0009
ATTR_UNKNOWN_ATTRIBUTES = 0x000A
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
_FINGERPRINT_XOR = 0x5354554E

_FAMILY_V4 = 0x01
_FAMILY_V6 = 0x02

Address = tuple[str, int]


class StunParseError(RemoteProtocolError, ValueError):
    """A datagram is not a well-formed STUN message."""


@dataclass(frozen=True)
class StunMessage:
    """One STUN message: type, 12-byte transaction ID and attributes in order."""

    msg_type: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...] = ()

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of this type, or None."""
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None


def is_stun(data: bytes) -> bool:
    """Cheap check that ``data`` looks like STUN (top bits zero, magic cookie present)."""
    return len(data) >= 20 and data[0] & 0xC0 == 0 and data[4:8] == _COOKIE_BYTES


def _fingerprint(data: bytes) -> int:
    return (binascii.crc32(data) & 0xFFFFFFFF) ^ _FINGERPRINT_XOR


def parse(data: bytes) -> StunMessage:
    """Decode one STUN message.

    Raises:
        StunParseError: wrong header, length, padding, attribute layout or FINGERPRINT.
    """
    data = bytes(data)
    if len(data) < HEADER.size:
        raise StunParseError(f"too short for a STUN header ({len(data)} bytes)")
    msg_type, length, cookie, tid = HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunParseError("the first two bits of a STUN message must be zero")
    if cookie != MAGIC_COOKIE:
        raise StunParseError("no STUN magic cookie")
    if length % 4 or HEADER.size + length != len(data):
        raise StunParseError(f"message length {length} does not match the datagram")
    attrs: list[tuple[int, bytes]] = []
    pos = HEADER.size
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunParseError("truncated attribute header")
        a_type, a_len = struct.unpack_from("!HH", data, pos)
        start = pos + 4
        end = start + a_len
        padded = start + (a_len + 3) // 4 * 4
        if padded > len(data):
            raise StunParseError(f"attribute 0x{a_type:04x} runs past the end")
        if a_type == ATTR_FINGERPRINT:
            if a_len != 4 or padded != len(data):
                raise StunParseError("FINGERPRINT must be the last attribute, 4 bytes long")
            (got,) = struct.unpack_from("!I", data, start)
            if got != _fingerprint(data[:pos]):
                raise StunParseError("FINGERPRINT does not match")
        attrs.append((a_type, data[start:end]))
        pos = padded
    return StunMessage(msg_type, tid, tuple(attrs))


def encode(msg: StunMessage, *, fingerprint: bool = True) -> bytes:
    """Encode a message; appends FINGERPRINT unless told not to (or it is already there)."""
    body = bytearray()
    for a_type, value in msg.attributes:
        if a_type == ATTR_FINGERPRINT:
            continue
        body += struct.pack("!HH", a_type, len(value)) + value
        body += b"\x00" * (-len(value) % 4)
    if len(msg.transaction_id) != 12:
        raise ValueError("a STUN transaction ID is 12 bytes")
    if not fingerprint:
        return HEADER.pack(msg.msg_type, len(body), MAGIC_COOKIE, msg.transaction_id) + bytes(body)
    head = HEADER.pack(msg.msg_type, len(body) + 8, MAGIC_COOKIE, msg.transaction_id)
    crc = _fingerprint(head + bytes(body))
    return head + bytes(body) + struct.pack("!HHI", ATTR_FINGERPRINT, 4, crc)


def _encode_address(addr: Address, tid: bytes, xor: bool) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    port = addr[1]
    raw = ip.packed
    family = _FAMILY_V4 if ip.version == 4 else _FAMILY_V6
    if xor:
        port ^= MAGIC_COOKIE >> 16
        mask = _COOKIE_BYTES + tid
        raw = bytes(a ^ b for a, b in zip(raw, mask, strict=False))
    return struct.pack("!BBH", 0, family, port) + raw


def _decode_address(value: bytes, tid: bytes, xor: bool) -> Address:
    if len(value) < 4:
        raise StunParseError("address attribute too short")
    _, family, port = struct.unpack_from("!BBH", value)
    raw = value[4:]
    if (family, len(raw)) not in ((_FAMILY_V4, 4), (_FAMILY_V6, 16)):
        raise StunParseError("bad address family or length")
    if xor:
        port ^= MAGIC_COOKIE >> 16
        mask = _COOKIE_BYTES + tid
        raw = bytes(a ^ b for a, b in zip(raw, mask, strict=False))
    return str(ipaddress.ip_address(raw)), port


def binding_request(
    transaction_id: bytes | None = None, *, software: str | None = None, fingerprint: bool = True
) -> tuple[bytes, bytes]:
    """A Binding request.

    Returns:
        The datagram and its transaction ID (to match the answer).
    """
    tid = transaction_id if transaction_id is not None else os.urandom(12)
    attrs: tuple[tuple[int, bytes], ...] = ()
    if software:
        attrs = ((ATTR_SOFTWARE, software.encode("utf-8")[:763]),)
    return encode(StunMessage(BINDING_REQUEST, tid, attrs), fingerprint=fingerprint), tid


def mapped_address(msg: StunMessage) -> Address | None:
    """The reflexive address in a Binding success answer (XOR-MAPPED-ADDRESS preferred)."""
    if msg.msg_type != BINDING_SUCCESS:
        return None
    value = msg.get(ATTR_XOR_MAPPED_ADDRESS)
    if value is not None:
        return _decode_address(value, msg.transaction_id, xor=True)
    value = msg.get(ATTR_MAPPED_ADDRESS)
    if value is not None:
        return _decode_address(value, msg.transaction_id, xor=False)
    return None


def _error(tid: bytes, code: int, reason: str, extra: tuple[tuple[int, bytes], ...]) -> StunMessage:
    value = struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")
    return StunMessage(BINDING_ERROR, tid, ((ATTR_ERROR_CODE, value), *extra))


@dataclass
class StunResponder:
    """The server side: answers Binding requests with the address they came from.

    Attributes:
        software: the SOFTWARE attribute put in answers ("" for none).
        requests: Binding requests answered with success.
        errors: requests answered with an error (unknown attributes).
        malformed: datagrams dropped because they were not well-formed STUN.
        ignored: well-formed STUN that needs no answer (indications, answers, other methods).
    """

    software: str = "tunnelmesh"
    requests: int = 0
    errors: int = 0
    malformed: int = 0
    ignored: int = 0
    _unknown_ok: frozenset[int] = field(default=frozenset({ATTR_SOFTWARE}), repr=False)

    def handle(self, data: bytes, addr: Address) -> bytes | None:
        """Process one datagram from ``addr``; return the answer to send there, or None."""
        try:
            msg = parse(data)
        except StunParseError:
            self.malformed += 1
            return None
        if msg.msg_type != BINDING_REQUEST:
            self.ignored += 1
            return None
        unknown: list[int] = []
        for a_type, value in msg.attributes:
            if a_type >= 0x8000:
                continue  # comprehension-optional
            if a_type == ATTR_CHANGE_REQUEST and value == b"\x00\x00\x00\x00":
                continue
            unknown.append(a_type)
        extra: tuple[tuple[int, bytes], ...] = ()
        if self.software:
            extra = ((ATTR_SOFTWARE, self.software.encode("utf-8")),)
        if unknown:
            self.errors += 1
            listed = b"".join(struct.pack("!H", t) for t in unknown)
            answer = _error(
                msg.transaction_id,
                420,
                "Unknown Attribute",
                ((ATTR_UNKNOWN_ATTRIBUTES, listed), *extra),
            )
            return encode(answer)
        try:
            xor = _encode_address(addr, msg.transaction_id, xor=True)
            plain = _encode_address(addr, msg.transaction_id, xor=False)
        except ValueError:
            self.malformed += 1
            return None
        self.requests += 1
        answer = StunMessage(
            BINDING_SUCCESS,
            msg.transaction_id,
            ((ATTR_XOR_MAPPED_ADDRESS, xor), (ATTR_MAPPED_ADDRESS, plain), *extra),
        )
        return encode(answer)
