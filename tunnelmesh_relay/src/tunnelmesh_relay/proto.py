"""The relay's wire format and its per-peer accounting (sans-IO: no sockets, no clock).

Peers hold one WebSocket to the coordinator (``/api/v1/relay``) and exchange binary messages::

    SEND       peer -> relay   [0x01][name length u8][destination name]{[length u16][message]}...
    RECV       relay -> peer   [0x02][name length u8][source name]{[length u16][message]}...
    UNREACHED  relay -> peer   [0x03][name length u8][name]   the destination has no relay link

Each ``message`` is a WireGuard message (handshake initiation/response, cookie reply or
transport data) produced by the sending peer's :class:`~tunnelmesh.proto.WireGuard` engine, so
the relay carries ciphertext only and learns nothing but the two peer names and sizes. The relay
forwards a SEND as a RECV by swapping the header: the records are copied untouched. It refuses
(drops and counts) a message whose records are not well-formed WireGuard messages, so the relay
cannot be used to carry plaintext either. (The original tunnelmesh relayed plaintext IP frames.)

A batch of packets for one peer is one WebSocket message.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal, overload

from tunnelmesh.errors import RemoteProtocolError

__all__ = [
    "RECV",
    "SEND",
    "UNREACHED",
    "PeerCounters",
    "RelayFormatError",
    "TokenBucket",
    "count_records",
    "decode_header",
    "encode_message",
    "encode_sealed",
    "rewrite_for_delivery",
    "split_records",
]

SEND = 0x01
RECV = 0x02
UNREACHED = 0x03

MAX_NAME = 255
MAX_RECORD = 65535

# WireGuard message types and sizes (whitepaper section 5.4)
_WG_SIZES = {1: (148, 148), 2: (92, 92), 3: (64, 64), 4: (32, 65535)}
_RECORD_HEAD = struct.Struct(">HI").unpack_from
"""A record's length and its first four bytes (WireGuard's type and three zero bytes)."""
_DATA_HEAD = 0x04000000
"""Those four bytes of a transport data message."""


class RelayFormatError(RemoteProtocolError, ValueError):
    """A relay message is malformed (the relay drops it and counts it)."""


def encode_message(
    kind: int, name: str, records: Sequence[bytes | bytearray | memoryview]
) -> bytes:
    """``[kind][len][name]`` followed by ``[u16 length][record]`` for each record."""
    raw = name.encode()
    if not 0 < len(raw) <= MAX_NAME:
        raise RelayFormatError(f"peer name of {len(raw)} bytes (1 to {MAX_NAME})")
    parts: list[bytes | bytearray | memoryview] = [bytes((kind, len(raw))), raw]
    for r in records:
        n = len(r)
        if n > MAX_RECORD:
            raise RelayFormatError(f"a {n}-byte record (at most {MAX_RECORD})")
        parts.append(n.to_bytes(2, "big"))
        parts.append(r)
    return b"".join(parts)


def decode_header(data: bytes) -> tuple[int, str, int]:
    """``(kind, name, offset of the first record)``.

    Raises:
        RelayFormatError: too short, unknown kind, or a name that is not UTF-8.
    """
    if len(data) < 3:
        raise RelayFormatError("message shorter than its header")
    kind, n = data[0], data[1]
    if kind not in (SEND, RECV, UNREACHED) or n == 0 or len(data) < 2 + n:
        raise RelayFormatError("bad message header")
    try:
        name = data[2 : 2 + n].decode()
    except UnicodeDecodeError:
        raise RelayFormatError("peer name is not UTF-8") from None
    return kind, name, 2 + n


@overload
def split_records(
    data: bytes, offset: int, *, wireguard: bool = True, views: Literal[False] = False
) -> list[bytes]: ...
@overload
def split_records(
    data: bytes, offset: int, *, wireguard: bool = True, views: Literal[True]
) -> list[memoryview]: ...
def split_records(
    data: bytes, offset: int, *, wireguard: bool = True, views: bool = False
) -> list[bytes] | list[memoryview]:
    """The records of a message from ``offset``; with ``wireguard``, each must look like a
    WireGuard message (type 1 to 4, three zero bytes, the size of its type). With ``views``
    the records are memoryviews of ``data`` (no copy per record: the WireGuard engine reads
    them during its call), else bytes.

    Raises:
        RelayFormatError: a record runs past the end, or is not a WireGuard message.
    """
    out: list[memoryview] = []
    append = out.append
    end = len(data)
    sizes = _WG_SIZES
    unpack = _RECORD_HEAD
    with memoryview(data) as mv:
        while offset < end:
            if end - offset < 2:
                raise RelayFormatError("truncated record length")
            if end - offset < 6:  # a record of at most 3 bytes: never a WireGuard message
                n, word = (data[offset] << 8) | data[offset + 1], -1
            else:
                n, word = unpack(data, offset)
            start = offset + 2
            offset = start + n
            if offset > end:
                raise RelayFormatError("record runs past the message")
            if (
                wireguard
                and (word != _DATA_HEAD or n < 32)
                and (
                    n < 4
                    or (limits := sizes.get(word >> 24)) is None
                    or word & 0xFFFFFF
                    or not limits[0] <= n <= limits[1]
                )
            ):
                raise RelayFormatError("record is not a WireGuard message")
            append(mv[start:offset])
    if views:
        return out
    return [bytes(r) for r in out]


def count_records(data: bytes, offset: int) -> int:
    """Check, without copying, that every record from ``offset`` is a well-formed WireGuard
    message (as :func:`split_records` does) and return how many there are.

    Raises:
        RelayFormatError: a record runs past the end, or is not a WireGuard message.
    """
    count = 0
    end = len(data)
    sizes = _WG_SIZES
    unpack = _RECORD_HEAD
    while offset < end:
        if end - offset < 6:
            raise RelayFormatError("truncated record")
        n, word = unpack(data, offset)
        offset += 2 + n
        # the common record, a transport data message, in one comparison
        if word != _DATA_HEAD or n < 32:
            if n < 4 or (limits := sizes.get(word >> 24)) is None:
                raise RelayFormatError("record is not a WireGuard message")
            if word & 0xFFFFFF or not limits[0] <= n <= limits[1]:
                raise RelayFormatError("record is not a WireGuard message")
        count += 1
    if offset > end:  # only the last record can run past the message
        raise RelayFormatError("record runs past the message")
    return count


def rewrite_for_delivery(data: bytes, offset: int, source: str) -> bytes:
    """Turn a SEND (records from ``offset``) into the RECV the destination gets (one copy of
    the records: a slice and a concatenation were two)."""
    raw = source.encode()
    with memoryview(data) as mv:
        return b"".join((bytes((RECV, len(raw))), raw, mv[offset:]))


def encode_sealed(
    name: str, buf: bytes | bytearray, sizes: Sequence[int], *, max_records: int = 64
) -> list[bytes]:
    """SEND messages to ``name`` for WireGuard messages lying back to back at the start of
    ``buf`` (their sizes in order), at most ``max_records`` per message: one copy of each
    record, straight from the sealing buffer.

    Raises:
        RelayFormatError: a bad name, or a record longer than 65535 bytes.
    """
    raw = name.encode()
    if not 0 < len(raw) <= MAX_NAME:
        raise RelayFormatError(f"peer name of {len(raw)} bytes (1 to {MAX_NAME})")
    head = bytes((SEND, len(raw))) + raw
    out: list[bytes] = []
    off = 0
    with memoryview(buf) as mv:
        for i in range(0, len(sizes), max_records):
            parts: list[bytes | memoryview] = [head]
            append = parts.append
            for n in sizes[i : i + max_records]:
                if n > MAX_RECORD:
                    raise RelayFormatError(f"a {n}-byte record (at most {MAX_RECORD})")
                append(n.to_bytes(2, "big"))
                append(mv[off : off + n])
                off += n
            out.append(b"".join(parts))
            parts.clear()  # the slices go before the buffer is released (it may grow later)
    return out


class TokenBucket:
    """A byte-rate limit: ``rate`` bytes per second, bursts up to ``burst`` bytes.

    Args:
        rate: sustained bytes per second (0 or less: unlimited).
        burst: the bucket size; a message larger than it never passes.
        now: the current time, seconds (monotonic).
    """

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, n: int, now: float) -> bool:
        """Spend ``n`` tokens if there are enough at ``now``; False (nothing spent) if not."""
        if self.rate <= 0:
            return True
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


@dataclass
class PeerCounters:
    """What the relay did for one peer (by peer name), since the coordinator started.

    Attributes:
        rx_bytes / rx_messages / rx_packets: received from this peer (accepted).
        tx_bytes / tx_messages: delivered to this peer.
        dropped_rate: messages from this peer over its rate limit.
        dropped_unreachable: messages from this peer to a peer without a relay link.
        dropped_queue: messages to this peer dropped because its send queue was full.
        dropped_invalid: malformed messages, or records that are not WireGuard messages.
    """

    rx_bytes: int = 0
    rx_messages: int = 0
    rx_packets: int = 0
    tx_bytes: int = 0
    tx_messages: int = 0
    dropped_rate: int = 0
    dropped_unreachable: int = 0
    dropped_queue: int = 0
    dropped_invalid: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
