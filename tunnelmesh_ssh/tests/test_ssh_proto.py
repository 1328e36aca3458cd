"""Frame encoding and decoding (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tunnelmesh_ssh.proto import FrameDecoder, encode_frames


def test_roundtrip_whole_and_byte_by_byte() -> None:
    packets = [b"\x45" * n for n in (1, 2, 20, 1420, 65535)]
    data = encode_frames(packets)
    assert len(data) == sum(len(p) + 2 for p in packets)
    assert FrameDecoder().feed(data) == packets
    dec = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    assert out == packets
    assert dec.pending == 0
    assert dec.frames == len(packets)


def test_split_at_every_offset() -> None:
    packets = [bytes([i]) * (i * 7 + 1) for i in range(12)]
    data = encode_frames(packets)
    for cut in range(len(data) + 1):
        dec = FrameDecoder()
        got = dec.feed(data[:cut]) + dec.feed(memoryview(data)[cut:])
        assert got == packets, cut


def test_empty_frames_are_skipped_and_partial_frames_wait() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00\x00\x03ab") == []
    assert dec.pending == 4  # the length and the two bytes so far
    assert dec.feed(b"c\x00") == [b"abc"]
    assert dec.pending == 1


def test_oversized_packet_is_refused() -> None:
    with pytest.raises(ValueError, match="65536-byte"):
        encode_frames([bytes(65536)])


@given(
    packets=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(0, 2500), max_size=6),
)
def test_any_chunking_gives_the_packets(packets: list[bytes], cuts: list[int]) -> None:
    """However the stream is cut into reads (SSH channel data arrives in any sizes), the
    decoder returns the non-empty packets in order and holds back nothing at the end."""
    data = encode_frames(packets)
    dec = FrameDecoder()
    out: list[bytes] = []
    last = 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        out += dec.feed(bytearray(data[last:cut]))
        last = cut
    assert out == [p for p in packets if p]
    assert dec.pending == 0
    assert dec.frames == len(out)
